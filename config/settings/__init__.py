"""Settings package: base (shared), local (development), test, production."""
