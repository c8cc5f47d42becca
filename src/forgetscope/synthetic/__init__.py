"""The synthetic testbed of conjugate prompting: in-context linear regression (Kotha et al., 2024).

A GPT-2 pretrained on a mixture of a discrete task pool and a continuous Gaussian prior,
fine-tuned on the pool only, forgets part of its ridge-regression ability; scaling the
in-context labels (conjugate prompting) gets part of it back.

    from forgetscope.synthetic import load_config, run_experiment, write_outputs
    results = run_experiment(load_config("cpu"))
    write_outputs(results, "synthetic-out")
"""

from forgetscope.synthetic.config import SyntheticConfig, load_config
from forgetscope.synthetic.experiment import run_experiment
from forgetscope.synthetic.plots import write_outputs

__all__ = ["SyntheticConfig", "load_config", "run_experiment", "write_outputs"]
