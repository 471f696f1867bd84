"""Per-row metrics of the ``gsm8k_answer_offline`` task (``process_results: !function gsm8k_answer.process_results``)."""


def process_results(doc, results):
    """One loglikelihood request per row: ``results == [(loglikelihood, is_greedy)]``."""
    loglikelihood, is_greedy = results[0]
    return {"answer_nll": -float(loglikelihood), "greedy_answer": int(bool(is_greedy))}
