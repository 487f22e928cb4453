"""Building TFRecords (and their manifest.json) from image folders, lists and VOC-style XML, and
the demo data sets: offline work done before training."""
