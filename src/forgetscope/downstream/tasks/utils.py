"""Result processing for the forgetscope cloze tasks (referenced from `_fs_cloze.yaml`).

The harness's own `loglikelihood` metrics are perplexity (no standard error) and greedy
accuracy; the mean negative log-likelihood per example has a standard error and reads in
the same nats as the forgetting metric, so it is computed here.
"""


def process_cloze(doc, results):
    loglikelihood, is_greedy = results[0]
    return {"nll": -loglikelihood, "acc": int(is_greedy)}
