"""`python -m training.cli ...` is `seqrec ...`."""

from training.cli import main

main()
