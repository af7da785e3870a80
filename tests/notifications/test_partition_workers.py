"""run_partition_workers: one concurrency-1 worker per partition queue, started without the per-task
`SELECT 1` health check (only deliver_stream runs there, and it retries an OperationalError)."""
import subprocess

from django.core.management import call_command

from notifications.management.commands import run_partition_workers


def test_partition_workers_run_without_the_per_task_health_check(monkeypatch, settings):
    settings.ORG_QUEUE_PARTITIONS = 2
    started = []

    class FakeSupervisor:
        def __init__(self, name, spawners):
            self.spawners = spawners

        def run(self):
            for spawn in self.spawners.values():
                spawn()

    monkeypatch.delenv("DB_CONN_HEALTH_CHECKS", raising=False)
    monkeypatch.setattr(run_partition_workers, "Supervisor", FakeSupervisor)
    monkeypatch.setattr(subprocess, "Popen", lambda argv, env: started.append((argv, env)))

    call_command("run_partition_workers")

    assert [argv[argv.index("-Q") + 1] for argv, _ in started] == ["org-0", "org-1"]
    assert all(argv[argv.index("-c") + 1] == "1" for argv, _ in started)
    assert all(env["DB_CONN_HEALTH_CHECKS"] == "false" for _, env in started)
