"""``python -m aop_client.cli``: the same as the ``aop`` console script."""

from . import main

if __name__ == "__main__":
    main()
