"""The external-evaluation room: `-e evaluate` scores a served model on a lab's own
labelled images before it is trusted there.

`plan` checks the inputs (model URIs, folder, class map) without TensorFlow;
`score` predicts as the served model does, scores with the evaluation room and
logs. May import data, evaluation, explain, serving, names and errors; never
training or study.
"""

from leukoml.external.labelled import ClassMapping, LabelledImages, map_classes, read_labelled
from leukoml.external.plan import EvaluateRequest, EvaluationPlan, plan_evaluation

__all__ = [
    "ClassMapping",
    "EvaluateRequest",
    "EvaluationPlan",
    "LabelledImages",
    "map_classes",
    "plan_evaluation",
    "read_labelled",
]
