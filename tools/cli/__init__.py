"""The programs' glue: flags generated from the param declarations, one-line messages for user
errors, and the TensorFlow environment (tf_env) set before TensorFlow is imported. Imported by
train.py and scripts/ only."""
