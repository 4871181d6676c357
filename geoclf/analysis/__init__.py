"""Results analysis of a trained run: accuracy tables, confusion matrix, misclassified-chip gallery, area map.

This reproduces the seed study's results section for any ``train`` or ``fine-tune`` run, as files and as one
self-contained ``report.html``. The numbers are the ones the run *recorded* (``evaluation.json``, written by
:meth:`geoclf.runs.RunRecorder.log_evaluation`): a report never re-scores a model into different metrics
than the run history shows. Only the gallery needs to know *which* validation chips were wrong, which the
evaluation does not keep, so the validation chips are predicted again:

- a ``features`` model whose feature directories are still there predicts the stored feature vectors
  (:meth:`geoclf.artifact.FeaturesModel.predict_proba_features`): exactly what training evaluated, in
  milliseconds, with no CNN;
- otherwise (a fine-tuned CNN, or features since deleted) the chips are read from their source rasters
  through the chip index and go through the model artifact's ``predict_proba``, as scoring does.

Either way the re-prediction is compared with the recorded confusion matrix and the report says whether
they agree. The gallery images are read from the source rasters through the chip index
(:class:`tiling.io.ChipReader`), RGB at the model's chip size.

The parts, each in its module: :mod:`geoclf.analysis.evaluation` (what the run recorded, the validation chips
predicted again, the mistakes), :mod:`geoclf.analysis.gallery` (the chip images), :mod:`geoclf.analysis.report`
(the area map and ``report.html``) and :mod:`geoclf.analysis.run` (:func:`results_report`: all of it written to
a directory).
"""

from __future__ import annotations

from geoclf.analysis.evaluation import (
    MODEL_KINDS,
    OVERALL_METRICS,
    comparison_table,
    misclassified,
    overall_table,
    predict_validation,
    recorded_evaluation,
    validation_chips,
)
from geoclf.analysis.gallery import GALLERY_DIR, write_gallery
from geoclf.analysis.report import area_map, write_report
from geoclf.analysis.run import results_report

__all__ = [
    "GALLERY_DIR",
    "MODEL_KINDS",
    "OVERALL_METRICS",
    "area_map",
    "comparison_table",
    "misclassified",
    "overall_table",
    "predict_validation",
    "recorded_evaluation",
    "results_report",
    "validation_chips",
    "write_gallery",
    "write_report",
]
