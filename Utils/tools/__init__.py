"""The model tools behind modelTools.py and lightgnn.py: loading and serving any model file
(Serve), compression report and compact export (Report), plots (Plots), run comparison
(Compare)."""
