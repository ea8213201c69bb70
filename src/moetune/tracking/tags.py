"""The names a sweep's record is kept under, shared by every tracking backend and the report.

Layout of a sweep (MLflow's terms; another backend keeps the same shape):
- one experiment per sweep (its name is the sweep name);
- one parent run per study, tag ROLE=STUDY, the tags below, params = the search space;
- one nested child run per trial, tag ROLE=TRIAL and PARENT_RUN_ID, params = the sampled
  hyperparameters, per-epoch metrics (step = epoch), final metrics, status FINISHED or FAILED; with
  train.save_weights, its best weights as the artifact WEIGHTS_ARTIFACT (tag WEIGHTS);
- one run tagged ROLE=EXPORT holding the report's files;
- while a driver runs the sweep, one run tagged ROLE=DRIVER: the sweep's lock (its PID, host, heartbeat).
"""

ROLE = "moetune.role"
STUDY = "study"
TRIAL = "trial"
EXPORT = "export"
DRIVER = "driver"
DRIVER_PID = "moetune.driver.pid"
DRIVER_HOST = "moetune.driver.host"
DRIVER_HEARTBEAT = "moetune.driver.heartbeat"  # unix seconds, renewed while the driver lives
PARENT_RUN_ID = "mlflow.parentRunId"
SWEEP = "moetune.sweep"
STUDY_KEY = "moetune.study"  # gate/local_search/dataset/task weights/seed, unique inside a sweep
TRIAL_ID = "moetune.trial_id"  # the tuner's id of the attempt that ran it
TRIAL_INDEX = "moetune.trial_index"  # the trial's number in its study, 0 .. n_trials-1
SAMPLED = "moetune.sampled"  # the sampler's values for the trial (JSON), its history on resume
GATE = "gate"
LOCAL_SEARCH = "local_search"  # the arm: "on" | "off" | "frozen" | "warmup" (moetune.config.LOCAL_SEARCH_ARMS)
DATASET = "dataset"
TASK_WEIGHTS = "task_weights"  # "equal" or e.g. "0.1_0.9": fixed per study, part of its identity
HEADLINE_METRIC = "moetune.headline_metric"  # the test twin of the selection metric: the answer's metric
SELECTION_METRIC = "moetune.selection_metric"  # the final metric that ranked the study's trials (best_<tuner.metric>)
SELECTION_MODE = "moetune.selection_mode"  # "min" | "max": its direction, from the metric's kind
SAMPLER = "sampler"  # "random" | "tpe" | ... (the Optuna sampler's class, lower case, without "Sampler")
SEED = "seed"
VERSION = "moetune.version"
GIT_COMMIT = "moetune.git_commit"
ERROR = "moetune.error"  # set on FAILED trials: the error's one-line message
OUTCOME = "moetune.outcome"  # on every ended trial: how it ended (moetune.contract.Outcome), one of:
OUTCOME_FINISHED = "finished"  # trained to its end (max epochs or early stopping); status FINISHED
OUTCOME_STOPPED = "stopped"  # stopped at a rung by the study's scheduler (ASHA, Hyperband); status FINISHED
OUTCOME_FAILED = "failed"  # raised; status FAILED
STOPPED_AT = "moetune.stopped_at_epoch"  # on a trial the scheduler stopped: the last epoch it trained
SCHEDULER = "moetune.scheduler"  # on a study with a scheduler: asha | hyperband (absent: none)
PERMUTATION = "permutation"  # the learned permutation of a local-search trial, as JSON
NODE = "moetune.node"  # the Ray node a finished trial ran on
INIT_DIGEST = "init_digest"  # fingerprint of the trial's initial weights
WEIGHTS = "moetune.weights"  # on a trial whose best weights were saved (train.save_weights): the artifact's path
WEIGHTS_ARTIFACT = "weights/model.pt"  # torch.save of the best epoch's state dict, CPU tensors
WEIGHTS_ERROR = "moetune.weights_error"  # on a finished trial whose weights could not be saved: why
INIT_FROM = "moetune.init_from"  # on an upcycled study: the dense checkpoint it started from
EXPERIMENT_KIND = "mlflow.experimentKind"  # MLflow 3's UI opens an experiment by its kind
MODEL_TRAINING = "custom_model_development"
