r"""Starts a tf.data service dispatcher or worker, for `train.py --data_service_address`.

When one accelerator needs more JPEG decoding than its host has cores, the training input pipeline
can run on other machines: one dispatcher, any number of workers, and the trainer sends its
pipeline (dataloader.input_fn) to them.

  python -m scripts.data_service dispatcher --port 5050 [--work_dir DIR]
  python -m scripts.data_service worker --dispatcher_address HOST:5050 --port 5051 \
      [--worker_address THIS_HOST:5051]
  python train.py --data_service_address grpc://HOST:5050 ...

Each worker needs this project's TensorFlow version and read access to the TFRecord files under the
same paths as the trainer. The program serves until it is stopped (Ctrl-C, SIGTERM); it prints one
line `dispatcher listening on port N` or `worker of HOST:PORT listening on port N` when ready.
"""

from absl import flags
import tensorflow as tf

from tools.cli import flags as cli
from tools.common import UserError

FLAGS = flags.FLAGS
ROLES = ("dispatcher", "worker")


def define_flags():
  """Defines the program's flags (not at import: tests import this module beside others)."""
  cli.define_flag("integer", "port", 5050, "Port to listen on (0: any free port).")
  cli.define_flag("string", "work_dir", None,
                  "Dispatcher: folder for its journal, so that a restarted dispatcher resumes its "
                  "jobs (fault-tolerant mode). Unset: state in memory only.")
  cli.define_flag("string", "dispatcher_address", None, "Worker: the dispatcher's HOST:PORT.")
  cli.define_flag("string", "worker_address", None,
                  "Worker: the HOST:PORT the trainer reaches this worker at. Default localhost:PORT.")


def _check_flags(argv):
  """The role (str) of the command line; UserError for a bad one."""
  if len(argv) != 2 or argv[1] not in ROLES:
    raise UserError(f"expected one argument, {' or '.join(ROLES)}; got {argv[1:]}")
  if not 0 <= FLAGS.port <= 65535:
    raise UserError(f"--port={FLAGS.port}: expected a port number 0..65535")
  if argv[1] == "worker" and not FLAGS.dispatcher_address:
    raise UserError("--dispatcher_address is required for a worker (the dispatcher's HOST:PORT)")
  return argv[1]


def start_server(role):
  """Starts the dispatcher or worker server of the flags; returns (server, port).

  Raises:
    UserError: the server cannot start (the port is taken, the work folder cannot be written).
  """
  service = tf.data.experimental.service
  try:
    if role == "dispatcher":
      server = service.DispatchServer(service.DispatcherConfig(
          port=FLAGS.port, work_dir=FLAGS.work_dir, fault_tolerant_mode=bool(FLAGS.work_dir)))
      return server, server.target.rsplit(":", 1)[1]
    server = service.WorkerServer(service.WorkerConfig(
        dispatcher_address=FLAGS.dispatcher_address.removeprefix("grpc://"),
        worker_address=FLAGS.worker_address, port=FLAGS.port))
    return server, server._address.rsplit(":", 1)[1]  # pylint: disable=protected-access
  except (tf.errors.OpError, RuntimeError, ValueError) as e:
    raise UserError(f"cannot start the {role} on port {FLAGS.port}: "
                    f"{' '.join(str(e).split())[:200]}") from e


def main(argv):
  """Starts the server of the role in argv and serves until stopped."""
  role = _check_flags(argv)
  server, port = start_server(role)
  where = "" if role == "dispatcher" else f" of {FLAGS.dispatcher_address}"
  print(f"{role}{where} listening on port {port}", flush=True)
  server.join()


if __name__ == "__main__":
  define_flags()
  cli.run(main)
