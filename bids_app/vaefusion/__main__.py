"""Allow ``python -m vaefusion``."""

from vaefusion.cli.run import main

if __name__ == "__main__":
    raise SystemExit(main())
