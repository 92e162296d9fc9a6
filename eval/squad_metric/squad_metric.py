"""Local Hugging Face ``evaluate`` metric: SQuAD v1.1 / v2.0 scored by ``finetune.squad``.

Load it offline with ``evaluate.load("eval/squad_metric")`` (config ``squad_v1``, the default)
or ``evaluate.load("eval/squad_metric", "squad_v2")``. Inputs have the shape of the hub
``squad`` / ``squad_v2`` metrics; the numbers come from ``finetune.squad``, the same code as
``finetune score``, so there is one implementation of the official scripts.
"""

import datasets
import evaluate

from finetune.squad import evaluate_v1, evaluate_v2

_CITATION = """\
@inproceedings{Rajpurkar2016SQuAD10,
  title={SQuAD: 100,000+ Questions for Machine Comprehension of Text},
  author={Pranav Rajpurkar and Jian Zhang and Konstantin Lopyrev and Percy Liang},
  booktitle={EMNLP},
  year={2016}
}
@inproceedings{Rajpurkar2018KnowWY,
  title={Know What You Don't Know: Unanswerable Questions for SQuAD},
  author={Pranav Rajpurkar and Robin Jia and Percy Liang},
  booktitle={ACL},
  year={2018}
}
"""

_DESCRIPTION = """\
The official SQuAD v1.1 (exact_match, f1) and v2.0 (exact, f1, HasAns_*, NoAns_*, best_*)
evaluation, computed by finetune.squad so results equal `finetune score` to the last digit.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of {"id": str, "prediction_text": str}; squad_v2 also needs
        "no_answer_probability": float (use 0.0 when the model has none).
    references: list of {"id": str, "answers": {"text": [str, ...], "answer_start": [int, ...]}};
        for squad_v2 an unanswerable question has empty lists.
    no_answer_threshold (squad_v2 only, default 1.0): a prediction is replaced by "" when its
        no_answer_probability is strictly greater than this.
Returns:
    squad_v1: {"exact_match", "f1"} in percent.
    squad_v2: "exact", "f1", "total", then "HasAns_*" / "NoAns_*" when present, then
        "best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh" (the evaluate-v2.0.py keys).
Example:
    >>> metric = evaluate.load("eval/squad_metric")
    >>> metric.compute(predictions=[{"id": "q1", "prediction_text": "Paris"}],
    ...                references=[{"id": "q1", "answers": {"text": ["Paris"], "answer_start": [0]}}])
    {'exact_match': 100.0, 'f1': 100.0}
"""

_CONFIGS = ("squad_v1", "squad_v2")


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SquadMetric(evaluate.Metric):
    """SQuAD v1.1 / v2.0 metric backed by ``finetune.squad``."""

    def _info(self):
        if self.config_name == "default":
            self.config_name = "squad_v1"
        if self.config_name not in _CONFIGS:
            raise ValueError(f"unknown config_name {self.config_name!r}; use one of {', '.join(_CONFIGS)}")
        prediction = {"id": datasets.Value("string"), "prediction_text": datasets.Value("string")}
        if self.config_name == "squad_v2":
            # float64 (the hub metric uses float32) so thresholds compare exactly like the JSON na-prob file.
            prediction["no_answer_probability"] = datasets.Value("float64")
        reference = {
            "id": datasets.Value("string"),
            "answers": datasets.features.Sequence(
                {"text": datasets.Value("string"), "answer_start": datasets.Value("int32")}
            ),
        }
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": prediction, "references": reference}),
            codebase_urls=["https://rajpurkar.github.io/SQuAD-explorer/"],
            reference_urls=["https://rajpurkar.github.io/SQuAD-explorer/"],
        )

    def _compute(self, predictions, references, no_answer_threshold=1.0):
        """Build the official dataset layout from the references and score it."""
        qas = [
            {"id": ref["id"], "answers": [{"text": text} for text in ref["answers"]["text"]]}
            for ref in references
        ]
        dataset = [{"paragraphs": [{"qas": qas}]}]
        pred_dict = {p["id"]: p["prediction_text"] for p in predictions}
        if self.config_name == "squad_v1":
            return evaluate_v1(dataset, pred_dict)
        # Like the hub squad_v2 metric, probabilities are always given, so best_* is always reported.
        na_probs = {p["id"]: p["no_answer_probability"] for p in predictions}
        return dict(evaluate_v2(dataset, pred_dict, na_probs, no_answer_threshold))
