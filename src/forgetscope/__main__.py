"""`python -m forgetscope`: the CLI, also as `torchrun -m forgetscope train ...` and `accelerate launch -m forgetscope train ...`."""

from forgetscope.cli import main

if __name__ == "__main__":
    main()
