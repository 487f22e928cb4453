"""Everything around the network, the input pipeline and the Estimator, by role.

  common.py   the one bottom module: errors, `param` declarations, atomic writes, progress, locks.
              The only part of tools/ that model.py, dataloader.py and estimator/ import.
  recipe/     the training recipe: the run's params, the optimizer and schedule, the experiment
              (params -> Estimator, input_fns, hooks), what the records hold, the fine-tune warm
              start, the hardware's default dtype, model statistics (parameters, MACs).
  datasets/   building TFRecords from images and the demo data sets (offline, before training).
  serving/    using a trained model: inference, SavedModel / TFLite / ONNX export, importing
              published weight files.
  cli/        the programs' glue: flags from the declarations, one-line errors, TensorFlow's
              environment set before it is imported.
"""
