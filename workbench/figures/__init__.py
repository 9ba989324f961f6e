"""Plotly figure builders. Each takes data (DataFrames, arrays, dicts from the run directory) and
returns a `plotly.graph_objects.Figure`; the dashboard and notebooks only display them.

    from workbench import figures
    figures.loss_figure([run_a, run_b]).show()
"""

from .attention import (attention_difference_heatmap, attention_heatmap, readout_bar, rollout_heatmap,
                        saliency_figure, write_figures_html)
from .data import class_balance_figure, token_length_figure
from .evaluation import (before_after_figure, confidence_figure, confusion_matrix_figure, per_class_figure,
                         slice_figure)
from .ner import (entity_colors, entity_slices_figure, entity_type_figure, error_types_figure, highlight_entities,
                  highlight_text, sentence_view, token_confusion_figure)
from .training import learning_rate_figure, loss_figure, metric_figure, metrics_by_run, throughput_figure

__all__ = ["attention_difference_heatmap", "attention_heatmap", "before_after_figure",
           "class_balance_figure", "confidence_figure", "confusion_matrix_figure", "entity_colors",
           "entity_slices_figure", "entity_type_figure", "error_types_figure", "highlight_entities",
           "highlight_text", "learning_rate_figure", "loss_figure", "metric_figure", "metrics_by_run",
           "per_class_figure", "readout_bar", "rollout_heatmap", "saliency_figure", "sentence_view",
           "slice_figure", "throughput_figure", "token_confusion_figure", "token_length_figure",
           "write_figures_html"]
