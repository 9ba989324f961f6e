"""From a run to a service: export, quantise, prune (`export`, `compress`) and serve (`serve`, `monitor`)."""
