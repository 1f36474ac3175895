"""``python -m cellprof`` (also what ``torchrun -m cellprof train ...`` runs)."""

from cellprof.cli import main

main()
