"""Run every benchmark in turn with the issues' scenarios (what `make bench` runs).

    make bench                                   # all of them (about 45 minutes: the email run
                                                 # takes 25 at the provider's real 200/min)
    make bench BENCH_ARGS="--only slack email --email-per-minute 2000"
"""
import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = {
    "tracker": ["tracker_pipeline.py", "--active-orgs", "1000", "--members", "10", "--total-orgs", "1000",
                "--rate", "500", "--duration", "60"],
    "tracker-1m": ["tracker_pipeline.py", "--active-orgs", "1000", "--members", "10", "--total-orgs", "1000000",
                   "--inactive-members", "1", "--rate", "500", "--duration", "60"],
    "capacity": ["capacity.py", "--preset", "1000x10", "--rate", "500", "--duration", "60"],
    "capacity-100x5": ["capacity.py", "--preset", "100x5", "--rate", "500", "--duration", "60"],
    "overload": ["capacity.py", "--preset", "100x5", "--rate", "100", "--overload", "2", "--duration", "60"],
    "slack": ["slack_delivery.py"],
    "email": ["email_profile.py"],
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=list(RUNS), default=list(RUNS))
    ap.add_argument("--email-per-minute", type=float, default=200)
    args = ap.parse_args()
    failed = 0
    for name in args.only:
        argv = [sys.executable, str(HERE / RUNS[name][0]), *RUNS[name][1:]]
        if name == "email":
            argv += ["--per-minute", str(args.email_per_minute)]
        print(f"\n### {name}: {' '.join(argv[1:])}", flush=True)
        failed += subprocess.run(argv).returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
