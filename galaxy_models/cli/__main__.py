"""``python -m galaxy_models.cli``: the same as the ``galaxy-pipeline`` console script."""

from galaxy_models.cli import main

main()
