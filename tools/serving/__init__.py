"""Using a trained model: restoring it with its params and label map, predicting files, SavedModel,
TFLite and ONNX export, and importing published weight files (pytorchcv .pth, tf2cv .h5)."""
