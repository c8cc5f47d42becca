"""Downstream evaluation through lm-evaluation-harness: base against fine-tuned on benchmarks
(`evaluate`), the refusal-rate safety task (`safety`), and the offline tasks built from the
embedded corpora (`offline`, YAMLs in `tasks/`); `sweep` runs them inside a sweep."""
