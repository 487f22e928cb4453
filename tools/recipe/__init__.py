"""The training recipe: params (one declaration per hyperparameter), the optimizer and its
poly schedule with warm-up, the experiment that builds the Estimator, what the records hold, the
fine-tune warm start, the default dtype of the hardware and model statistics."""
