//! What a run keeps: metrics files (CSV / JSONL) and PNG plots of the curves.
