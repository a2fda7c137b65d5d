//! What a run keeps: metrics files (CSV / JSONL) and PNG plots of the curves.
//!
//! - [`metrics`]: [`MetricsWriter`] appends [`Record`]s (named numbers and strings) to `{name}.jsonl` and
//!   `{name}.csv` in a run folder, one unbuffered line per record so a killed run keeps its metrics;
//!   [`read_jsonl`] reads them back (for plots and for resume), [`series`] extracts `(x, y)` curves.
//! - [`plot`]: [`plot_training`] draws training loss per step and kNN top-1 per epoch into a two-panel PNG, with
//!   an embedded DejaVu Sans font (plotters has no system font lookup in this build).

pub mod metrics;
pub mod plot;

pub use metrics::{read_jsonl, series, MetricsWriter, Record, Value};
pub use plot::{plot_training, plot_training_with_health, register_embedded_font, HealthCurves, PlotOptions, FONT_FAMILY};
