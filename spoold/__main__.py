"""`python -m spoold`: the guard matters, vLLM starts its workers with spawn."""

from spoold.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
