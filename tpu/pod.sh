#!/usr/bin/env bash
# pjax on a Cloud TPU VM slice (v5p, v6e, ...): create, install, mount, launch, logs, status, stop, delete.
#
#   tpu/pod.sh SUBCOMMAND [options] [-- passthrough]      (tpu/pod.sh help for the details)
#
# Every subcommand takes --dry-run: print each command it would run, one per line, quoted for bash,
# and run nothing. Settings come from flags or from the environment (TPU_NAME, ZONE, PROJECT,
# ACCELERATOR, RUNTIME_VERSION, WORKDIR, BUCKET, MOUNT, TPU_SPOT, TPU_QUEUED).
set -euo pipefail

if ((BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 4))); then
  echo "${0##*/}: needs bash >= 4.4, this is $BASH_VERSION (on macOS: brew install bash)" >&2
  exit 2
fi

PROG=${0##*/}
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLOUD_PLATFORM_SCOPE=https://www.googleapis.com/auth/cloud-platform

usage() {
  cat <<EOF
Usage: $PROG SUBCOMMAND [options] [-- passthrough]

Subcommands
  create    create the slice (gcloud compute tpus tpu-vm create, or a queued resource with --queued)
  install   copy the repo at the current git commit (HEAD) to every worker, make a venv there and
            pip install -e '.[tpu]'; with --bucket, then mount the bucket too (as 'mount' does)
  mount     mount the Cloud Storage bucket on every worker at the same path with gcsfuse (installed
            with apt-get when missing); does nothing where it is already mounted
  launch    start python -m pjax.train on every worker in the background (nohup), each logging to a file
            (alias: run)
  logs      stream the training log of worker 0 (JAX process 0)
  status    the slice's state, and on every worker whether training runs and its last log line
  stop      SIGTERM the training on every worker (pjax saves a checkpoint, then exits); wait for it
  ssh       a shell on one worker, or with '-- COMMAND' run COMMAND there (--worker=all: everywhere)
  delete    delete the slice (or the queued resource and its slice)
  help      this text

Settings (flag, or environment variable)
  --name NAME              TPU_NAME         slice name (required)
  --zone ZONE              ZONE             e.g. us-east5-a (required)
  --project PROJECT        PROJECT          default: gcloud's configured project
  --accelerator TYPE       ACCELERATOR      e.g. v5p-32, v6e-16 (required by create)
  --runtime-version V      RUNTIME_VERSION  TPU software image; default from the accelerator:
                                            v5p -> v2-alpha-tpuv5, v6e -> v2-alpha-tpuv6e,
                                            v5litepod -> v2-alpha-tpuv5-lite, v4 -> tpu-ubuntu2204-base
  --bucket NAME            BUCKET           install/mount: the Cloud Storage bucket for the work
                                            directories (the name, without gs://)
  --mount DIR              MOUNT            where the bucket is mounted on every worker, an absolute
                                            path (default /mnt/pjax-runs)
  --spot                   TPU_SPOT=1       create: a spot slice (cheaper; can be preempted)
  --queued                 TPU_QUEUED=1     create/delete/status: go through a queued resource
                                            named like the slice (waits for capacity)
  --remote-dir DIR         PJAX_REMOTE_DIR  code and venv on the workers (default pjax, under \$HOME)
  --log-dir DIR            PJAX_LOG_DIR     logs and pid file on the workers (default pjax-logs)
  --python PYTHON          PJAX_PYTHON      interpreter for the venv (default python3.11; installed
                                            with apt-get when missing)
  --dry-run                                 print the commands, run nothing

launch
  --config FILE            the pjax config file, relative to the repo (required)
  --workdir DIR            WORKDIR          the phase's directory, passed as --config.workdir: a
                                            path in the mounted bucket; a relative one is taken under
                                            MOUNT (sft -> /mnt/pjax-runs/sft). Required, unless given
                                            as --config.workdir=/ABSOLUTE/PATH. gs:// URLs are refused:
                                            pjax writes through the mount
  --config.KEY=VALUE                        any pjax override, passed on as given
  --env NAME=VALUE                          an environment variable for the training processes
  --run-name NAME                           log file name (default train-<UTC time>)
  -- ARGS                                   more arguments for python -m pjax.train, as given
logs:   --worker N (default 0), --lines N (default 100), --no-follow
stop:   --wait SECONDS (default 300) for the checkpoint save; --force sends SIGKILL instead
ssh:    --worker N|all (default 0)
delete: --yes (no confirmation prompt)
create: arguments after -- go to gcloud (e.g. -- --reserved --network=NET); for the bucket the
        slice's service account needs storage access: -- --scopes=$CLOUD_PLATFORM_SCOPE
        (and --service-account=EMAIL for another account than the default compute one)

Examples
  export TPU_NAME=pjax-v5p ZONE=us-east5-a ACCELERATOR=v5p-32 BUCKET=my-bucket
  $PROG create --spot -- --scopes=$CLOUD_PLATFORM_SCOPE
  $PROG install     # code and venv; BUCKET is set, so it also mounts the bucket at /mnt/pjax-runs
  $PROG launch --config=configs/sft_llama.py --workdir=/mnt/pjax-runs/sft --config.train.steps=2000
  $PROG logs
EOF
}

die() {
  echo "$PROG: error: $*" >&2
  exit 2
}

warn() {
  echo "$PROG: warning: $*" >&2
}

# One word, quoted for bash only when it needs it: safe characters are left bare, anything else is
# single-quoted (a single quote inside becomes '\'').
quote() {
  local s=$1 q="'\\''"
  if [[ $s =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$s"
  elif [[ $s =~ ^(--[A-Za-z0-9_.-]+=)(.*)$ ]]; then
    printf '%s' "${BASH_REMATCH[1]}"
    quote "${BASH_REMATCH[2]}"
  else
    printf "'%s'" "${s//\'/$q}"
  fi
}

# A whole command line: each argument quoted, separated by spaces.
quote_cmd() {
  local out="" arg
  for arg in "$@"; do
    out+="${out:+ }$(quote "$arg")"
  done
  printf '%s' "$out"
}

# A path on the workers: absolute paths as given, anything else under the remote user's $HOME.
remote_path() {
  local p=$1
  case $p in
    /*) quote "$p" ;;
    *)
      # shellcheck disable=SC2016  # $HOME is expanded on the worker, not here
      printf '"$HOME"/%s' "$(quote "${p#\~/}")"
      ;;
  esac
}

# Run a command, or with --dry-run print it (one line, quoted) and run nothing.
run() {
  if ((DRY_RUN)); then
    quote_cmd "$@"
    printf '\n'
  else
    printf '+ %s\n' "$(quote_cmd "$@")" >&2
    "$@"
  fi
}

# ----------------------------------------------------------------------------------------- settings

TPU_NAME=${TPU_NAME:-}
ZONE=${ZONE:-}
PROJECT=${PROJECT:-}
ACCELERATOR=${ACCELERATOR:-}
RUNTIME_VERSION=${RUNTIME_VERSION:-}
WORKDIR=${WORKDIR:-}
BUCKET=${BUCKET:-}
MOUNT=${MOUNT:-/mnt/pjax-runs}
SPOT=${TPU_SPOT:-0}
QUEUED=${TPU_QUEUED:-0}
REMOTE_DIR=${PJAX_REMOTE_DIR:-pjax}
LOG_DIR=${PJAX_LOG_DIR:-pjax-logs}
PYTHON=${PJAX_PYTHON:-python3.11}
DRY_RUN=0
YES=0
FORCE=0
FOLLOW=1
WORKER=""
LINES=100
WAIT=300
CONFIG=""
RUN_NAME=""
TRAIN_ARGS=()
ENV_ARGS=()
PASSTHROUGH=()
SUBCOMMAND=""

# Each missing required setting, named with its flag and variable, all in one error.
require() {
  local missing=() spec var flag
  for spec in "$@"; do
    var=${spec%%:*}
    flag=${spec#*:}
    [[ -n ${!var} ]] || missing+=("$var (--$flag or export $var=...)")
  done
  if ((${#missing[@]})); then
    local msg="$SUBCOMMAND needs these settings:" m
    for m in "${missing[@]}"; do msg+=$'\n'"  $m"; done
    die "$msg"
  fi
}

default_runtime_version() {
  case $1 in
    v6e-*) echo v2-alpha-tpuv6e ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-*) echo v2-alpha-tpuv5-lite ;;
    v4-*) echo tpu-ubuntu2204-base ;;
    *) echo "" ;;
  esac
}

is_flag_value() {
  [[ $1 == 0 || $1 == 1 ]]
}

# ------------------------------------------------------------------------------------ gcloud parts

PROJECT_ARGS=() # --project=..., when PROJECT is set (else gcloud's configured project)

tpu_vm() {
  run gcloud compute tpus tpu-vm "$@" "${PROJECT_ARGS[@]}"
}

queued_resources() {
  run gcloud compute tpus queued-resources "$@" "${PROJECT_ARGS[@]}"
}

# Shell steps joined into one line for the workers: '; ' between them, a space after a step that
# ends in '&' (which already ends a command).
join_steps() {
  local out="" step
  for step in "$@"; do
    if [[ -z $out ]]; then
      out=$step
    elif [[ $out == *"&" ]]; then
      out+=" $step"
    else
      out+="; $step"
    fi
  done
  printf '%s' "$out"
}

# Run a shell command on the workers ($1: all, or an index).
on_workers() {
  local worker=$1
  shift
  tpu_vm ssh "$TPU_NAME" "--zone=$ZONE" "--worker=$worker" "--command=$*"
}

# Shell snippets used on the workers. $L is the log directory there.
# shellcheck disable=SC2016  # expanded on the worker
ALIVE='alive() { kill -0 "$1" 2>/dev/null && [ "$(ps -o stat= -p "$1" | cut -c1)" != Z ]; }'

log_dir_def() {
  printf 'L=%s' "$(remote_path "$LOG_DIR")"
}

# -------------------------------------------------------------------------------------- subcommands

cmd_create() {
  require TPU_NAME:name ZONE:zone ACCELERATOR:accelerator
  [[ -n $RUNTIME_VERSION ]] || RUNTIME_VERSION=$(default_runtime_version "$ACCELERATOR")
  [[ -n $RUNTIME_VERSION ]] ||
    die "create needs RUNTIME_VERSION (--runtime-version or export RUNTIME_VERSION=...): no default" \
      "for accelerator $ACCELERATOR (gcloud compute tpus tpu-vm versions list --zone=$ZONE lists them)"
  local spot=()
  if ((SPOT)); then spot=(--spot); fi
  if ((QUEUED)); then
    queued_resources create "$TPU_NAME" "--node-id=$TPU_NAME" "--zone=$ZONE" \
      "--accelerator-type=$ACCELERATOR" "--runtime-version=$RUNTIME_VERSION" "${spot[@]}" \
      "${PASSTHROUGH[@]}"
    ((DRY_RUN)) || echo "queued; '$PROG status --queued' shows when the slice is ACTIVE" >&2
  else
    tpu_vm create "$TPU_NAME" "--zone=$ZONE" "--accelerator-type=$ACCELERATOR" \
      "--version=$RUNTIME_VERSION" "${spot[@]}" "${PASSTHROUGH[@]}"
  fi
}

check_remote_dirs() {
  local d
  for d in "$REMOTE_DIR" "$LOG_DIR"; do
    case $d in
      "" | / | . | ./ | \~ | \~/ | *..*) die "unsafe remote directory '$d' (--remote-dir / --log-dir)" ;;
    esac
  done
}

# The bucket's name: gs://NAME and a trailing / are accepted and dropped; a path inside it is not.
check_bucket() {
  BUCKET=${BUCKET#gs://}
  BUCKET=${BUCKET%/}
  [[ $BUCKET =~ ^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$ ]] ||
    die "BUCKET (--bucket) wants a bucket name like my-bucket (lower case, digits, '-', '_', '.'), got '$BUCKET'"
}

# The mount point: absolute, the same literal path on every worker (the workdirs name it).
check_mount() {
  [[ $MOUNT == /* && $MOUNT != / && $MOUNT != *..* && $MOUNT =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]] ||
    die "MOUNT (--mount) wants an absolute path like /mnt/pjax-runs (letters, digits, '_', '.', '-', '/'), got '$MOUNT'"
  while [[ $MOUNT == */ ]]; do MOUNT=${MOUNT%/}; done
}

# On each worker: nothing if MOUNT is already a mount (of BUCKET); otherwise install gcsfuse if missing
# (Google's apt repository for the Ubuntu release), create MOUNT, mount BUCKET there. The metadata cache
# is off: every worker writes to the bucket, and a cached (or cached-missing) entry would hide the files
# the other workers wrote, such as checkpoint shards.
mount_steps() {
  local m b repo key
  m=$(quote "$MOUNT")
  b=$(quote "$BUCKET")
  repo=/etc/apt/sources.list.d/gcsfuse.list
  key=/usr/share/keyrings/cloud.google.asc
  MOUNT_STEPS=(
    "set -e"
    "if mountpoint -q $m; then s=\$(findmnt -n -o SOURCE $m 2>/dev/null || true); if [ -n \"\$s\" ] && [ \"\$s\" != $b ]; then echo \"\$(hostname): $m is already a mount of \$s, not $b; unmount it (fusermount -u $m) or choose another --mount\" >&2; exit 1; fi; echo \"\$(hostname): gs://$b is already mounted at $m\"; exit 0; fi"
    "if ! command -v gcsfuse >/dev/null 2>&1; then echo \"deb [signed-by=$key] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -c -s) main\" | sudo tee $repo >/dev/null; curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee $key >/dev/null; sudo apt-get -qq update; sudo apt-get -qq -o DPkg::Lock::Timeout=600 install -y gcsfuse; fi"
    "mkdir -p $m 2>/dev/null || sudo mkdir -p $m"
    "if [ ! -w $m ]; then sudo chown \"\$(id -u):\$(id -g)\" $m; fi"
    "gcsfuse --implicit-dirs --metadata-cache-ttl-secs=0 $b $m || { echo \"\$(hostname): gcsfuse could not mount gs://$b: does the bucket exist, and may the slice's service account use it (create with -- --scopes=$CLOUD_PLATFORM_SCOPE; roles/storage.objectUser on the bucket)?\" >&2; exit 1; }"
    "echo \"\$(hostname): gs://$b mounted at $m\""
  )
}

cmd_mount() {
  require TPU_NAME:name ZONE:zone BUCKET:bucket
  check_bucket
  check_mount
  mount_steps
  on_workers all "$(join_steps "${MOUNT_STEPS[@]}")"
}

cmd_install() {
  require TPU_NAME:name ZONE:zone
  check_remote_dirs
  if [[ -n $BUCKET ]]; then
    check_bucket
    check_mount
  fi
  local rev short tarball remote_tar d
  rev=$(git -C "$REPO_ROOT" rev-parse HEAD) || die "$REPO_ROOT is not a git checkout"
  short=${rev:0:12}
  if [[ -n $(git -C "$REPO_ROOT" status --porcelain --untracked-files=no) ]]; then
    warn "uncommitted changes are not installed: the workers get commit $short (HEAD)"
  fi
  tarball="${TMPDIR:-/tmp}/pjax-$short.tar.gz"
  remote_tar="pjax-$short.tar.gz"
  d=$(remote_path "$REMOTE_DIR")
  # On each worker: replace the code (keeping the venv), then create the venv if needed and install.
  # A non-empty directory without the REVISION file that install writes is refused, not wiped.
  local steps=(
    "set -e"
    "$ALIVE"
    "$(log_dir_def)"
    "D=$d"
    "if [ -f \"\$L\"/train.pid ] && alive \"\$(cat \"\$L\"/train.pid)\"; then echo \"\$(hostname): pjax is running (pid \$(cat \"\$L\"/train.pid)); stop it before installing\" >&2; exit 1; fi"
    "mkdir -p \"\$D\""
    "if [ -n \"\$(ls -A \"\$D\")\" ] && [ ! -f \"\$D\"/REVISION ]; then echo \"\$(hostname): \$D exists and was not installed by pod.sh; choose another --remote-dir\" >&2; exit 1; fi"
    "find \"\$D\" -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf {} +"
    "tar -xzf \"\$HOME\"/$(quote "$remote_tar") -C \"\$D\""
    "rm -f \"\$HOME\"/$(quote "$remote_tar")"
    "echo $rev > \"\$D\"/REVISION"
    "if ! command -v $(quote "$PYTHON") >/dev/null 2>&1; then sudo apt-get -qq update && sudo apt-get -qq -o DPkg::Lock::Timeout=600 install -y $(quote "$PYTHON") $(quote "$PYTHON-venv"); fi"
    "cd \"\$D\""
    "if [ ! -x .venv/bin/python ]; then $(quote "$PYTHON") -m venv .venv; fi"
    ".venv/bin/python -m pip install -q --upgrade pip"
    ".venv/bin/python -m pip install -q -e '.[tpu]'"
    "echo \"\$(hostname): pjax $short installed in \$D\""
  )
  if ((!DRY_RUN)); then
    # shellcheck disable=SC2064  # the path is fixed now
    trap "rm -f '$tarball'" EXIT
  fi
  run git -C "$REPO_ROOT" archive --format=tar.gz -o "$tarball" HEAD
  tpu_vm scp "$tarball" "$TPU_NAME:$remote_tar" "--zone=$ZONE" --worker=all
  run rm -f "$tarball"
  on_workers all "$(join_steps "${steps[@]}")"
  if [[ -n $BUCKET ]]; then
    mount_steps
    on_workers all "$(join_steps "${MOUNT_STEPS[@]}")"
  fi
}

# An object-store URL where pjax wants a path: refused, with the mounted path to pass instead.
refuse_url() {
  local what=$1 url=$2 bucket rest
  bucket=${url#*://}
  rest=""
  if [[ $bucket == */* ]]; then
    rest=/${bucket#*/}
    bucket=${bucket%%/*}
  fi
  die "$what=$url: pjax takes filesystem paths, not object-store URLs (it appends to files, renames" \
    "them, and multi-host checkpoints need a filesystem every worker sees). Mount the bucket on every" \
    "worker ('$PROG mount --bucket=${bucket:-BUCKET}', or install --bucket=${bucket:-BUCKET}; it lands at" \
    "$MOUNT) and pass the mounted path instead: $what=$MOUNT${rest%/}"
}

# The --config.workdir / --config.init_from values among the pjax arguments (--config.KEY=VALUE, or in
# the passthrough also --config.KEY VALUE), as KEY=VALUE lines.
path_overrides() {
  local args=("${TRAIN_ARGS[@]}" "${PASSTHROUGH[@]}") i a
  for ((i = 0; i < ${#args[@]}; i++)); do
    a=${args[i]}
    case $a in
      --config.workdir=* | --config.init_from=*) printf '%s\n' "${a#--config.}" ;;
      --config.workdir | --config.init_from) printf '%s=%s\n' "${a#--config.}" "${args[i + 1]:-}" ;;
    esac
  done
}

cmd_launch() {
  # Paths first: a gs:// workdir is refused before anything else is looked at or run.
  check_mount
  local line key value workdir="" uses_mount=0
  [[ $WORKDIR != *://* ]] || refuse_url --workdir "$WORKDIR"
  while IFS= read -r line; do
    key=${line%%=*}
    value=${line#*=}
    [[ $value != *://* ]] || refuse_url "--config.$key" "$value"
    if [[ $key == workdir ]]; then
      [[ -z $WORKDIR ]] || die "the workdir is given twice: WORKDIR/--workdir and --config.workdir=..."
      [[ -n $value ]] || die "--config.workdir is empty"
      workdir=$value
    fi
    [[ -z $value || $value == /* ]] ||
      die "--config.$key=$value is a relative path, which each worker would resolve on its own disk:" \
        "pass an absolute path in the mounted bucket, e.g. --config.$key=$MOUNT/$value"
    [[ $value != "$MOUNT" && $value != "$MOUNT"/* ]] || uses_mount=1
  done < <(path_overrides)
  if [[ -z $workdir ]]; then
    [[ -n $WORKDIR ]] || die "launch needs WORKDIR (--workdir DIR or export WORKDIR=...): the phase's" \
      "directory in the mounted bucket (a relative DIR is taken under $MOUNT); relaunching with the same one resumes"
    [[ $WORKDIR == /* ]] || WORKDIR=$MOUNT/${WORKDIR#./}
    workdir=$WORKDIR
  fi
  if [[ $workdir == "$MOUNT" || $workdir == "$MOUNT"/* ]]; then
    uses_mount=1
  else
    warn "workdir $workdir is not under the bucket mount $MOUNT: every worker must see the same directory"
  fi
  require TPU_NAME:name ZONE:zone
  check_remote_dirs
  [[ -n $CONFIG ]] || die "launch needs --config FILE (e.g. --config=configs/sft_llama.py)"
  [[ -f $REPO_ROOT/${CONFIG%%:*} ]] || warn "$CONFIG is not a file in $REPO_ROOT (the workers run HEAD)"
  # Where the run reads or writes under MOUNT, the workers check that the bucket is mounted there: else
  # pjax would write to each worker's own disk, and a relaunch on a new slice would not find it.
  local mount_check=()
  if ((uses_mount)); then
    mount_check=("mountpoint -q $(quote "$MOUNT") || { echo \"\$(hostname): $(quote "$MOUNT") is not mounted; mount the bucket first ('$PROG mount --bucket=BUCKET' or install --bucket=BUCKET)\" >&2; exit 1; }")
  fi
  [[ -n $RUN_NAME ]] || RUN_NAME=train-$(date -u +%Y%m%d-%H%M%S)
  [[ $RUN_NAME =~ ^[A-Za-z0-9_.-]+$ ]] || die "--run-name may hold only letters, digits, '_', '.', '-'"
  local train=(.venv/bin/python -m pjax.train "--config=$CONFIG")
  if [[ -n $WORKDIR ]]; then train+=("--config.workdir=$WORKDIR"); fi
  train+=("${TRAIN_ARGS[@]}" "${PASSTHROUGH[@]}")
  local log="\"\$L\"/$RUN_NAME.log"
  # On each worker the train command becomes "$@": written to the log's header, then run detached
  # (its own session and process group, so stop can signal the group), with its pid in $L/train.pid.
  local steps=(
    "set -e"
    "$ALIVE"
    "$(log_dir_def)"
    "D=$(remote_path "$REMOTE_DIR")"
    "mkdir -p \"\$L\""
    "cd \"\$D\" 2>/dev/null && [ -x .venv/bin/python ] || { echo \"\$(hostname): no pjax install in \$D; run install first\" >&2; exit 1; }"
    "if [ -f \"\$L\"/train.pid ] && alive \"\$(cat \"\$L\"/train.pid)\"; then echo \"\$(hostname): pjax is already running (pid \$(cat \"\$L\"/train.pid)); stop it first\" >&2; exit 1; fi"
    "${mount_check[@]}"
    "set -- $(quote_cmd "${train[@]}")"
    "{ echo \"# \$(date -u) \$(hostname) pjax \$(cat REVISION 2>/dev/null)\"; echo \"# \$*\"; } > $log"
    "$(quote_cmd env PYTHONUNBUFFERED=1 "${ENV_ARGS[@]}" setsid nohup) \"\$@\" >> $log 2>&1 < /dev/null &"
    "echo \$! > \"\$L\"/train.pid"
    "ln -sfn $RUN_NAME.log \"\$L\"/train.log"
    "echo \"\$(hostname): started pid \$(cat \"\$L\"/train.pid), log \$L/$RUN_NAME.log\""
  )
  on_workers all "$(join_steps "${steps[@]}")"
}

cmd_logs() {
  require TPU_NAME:name ZONE:zone
  check_remote_dirs
  [[ $LINES =~ ^[0-9]+$ ]] || die "--lines must be a number"
  local follow=-F
  ((FOLLOW)) || follow=""
  on_workers "${WORKER:-0}" "$(log_dir_def); tail -n $LINES $follow \"\$L\"/train.log"
}

cmd_status() {
  require TPU_NAME:name ZONE:zone
  check_remote_dirs
  check_mount
  if ((QUEUED && DRY_RUN)); then
    queued_resources describe "$TPU_NAME" "--zone=$ZONE" "--format=value(state.state)"
  elif ((QUEUED)); then
    local qstate
    qstate=$(queued_resources describe "$TPU_NAME" "--zone=$ZONE" "--format=value(state.state)") ||
      die "cannot describe the queued resource $TPU_NAME in $ZONE"
    echo "queued resource $TPU_NAME: $qstate"
    case $qstate in
      ACTIVE) ;;
      SUSPENDED | FAILED)
        echo "it will not come back: '$PROG delete --queued' it and create it again" >&2
        return 0
        ;;
      *)
        echo "no slice to ask yet" >&2
        return 0
        ;;
    esac
  fi
  local state
  if ((DRY_RUN)); then
    tpu_vm describe "$TPU_NAME" "--zone=$ZONE" "--format=value(state,health,acceleratorType)"
    state=READY
  else
    state=$(tpu_vm describe "$TPU_NAME" "--zone=$ZONE" "--format=value(state,health,acceleratorType)") ||
      die "cannot describe $TPU_NAME in $ZONE (not created yet, or still queued?)"
    echo "$TPU_NAME: $state"
    state=${state%%[[:space:]]*}
  fi
  if [[ $state != READY ]]; then
    echo "$TPU_NAME is $state, not READY: not asking the workers" >&2
    [[ $state == PREEMPTED ]] && echo "a preempted slice cannot restart: delete it and create it again" >&2
    return 0
  fi
  local d
  d=$(remote_path "$REMOTE_DIR")
  local steps=(
    "$ALIVE"
    "$(log_dir_def)"
    "if [ -f \"\$L\"/train.pid ] && alive \"\$(cat \"\$L\"/train.pid)\"; then s=\"running (pid \$(cat \"\$L\"/train.pid))\"; else s=\"not running\"; fi"
    "r=\$(cat $d/REVISION 2>/dev/null || echo 'not installed')"
    "if mountpoint -q $(quote "$MOUNT") 2>/dev/null; then m=\"bucket mounted at $(quote "$MOUNT")\"; else m=\"no bucket at $(quote "$MOUNT")\"; fi"
    "echo \"\$(hostname): \$s; revision \$r; \$m\""
    "if [ -f \"\$L\"/train.log ]; then tail -n 1 \"\$L\"/train.log | cut -c1-200; fi"
  )
  on_workers all "$(join_steps "${steps[@]}")"
}

cmd_stop() {
  require TPU_NAME:name ZONE:zone
  check_remote_dirs
  [[ $WAIT =~ ^[0-9]+$ ]] || die "--wait must be a number of seconds"
  local sig=TERM wait=$WAIT
  if ((FORCE)); then sig=KILL wait=10; fi
  local steps=(
    "$ALIVE"
    "$(log_dir_def)"
    "if [ ! -f \"\$L\"/train.pid ] || ! alive \"\$(cat \"\$L\"/train.pid)\"; then echo \"\$(hostname): not running\"; exit 0; fi"
    "pid=\$(cat \"\$L\"/train.pid)"
    "kill -$sig -- \"-\$pid\" 2>/dev/null || kill -$sig \"\$pid\""
    "echo \"\$(hostname): sent SIG$sig to pid \$pid, waiting up to ${wait}s\""
    "i=0"
    "while alive \"\$pid\" && [ \"\$i\" -lt $wait ]; do sleep 1; i=\$((i + 1)); done"
    "if alive \"\$pid\"; then echo \"\$(hostname): pid \$pid still running after ${wait}s; '$PROG stop --force' sends SIGKILL\" >&2; exit 1; fi"
    "echo \"\$(hostname): stopped\""
  )
  on_workers all "$(join_steps "${steps[@]}")"
}

cmd_ssh() {
  require TPU_NAME:name ZONE:zone
  if ((${#PASSTHROUGH[@]})); then
    on_workers "${WORKER:-0}" "${PASSTHROUGH[*]}"
  else
    [[ ${WORKER:-0} =~ ^[0-9]+$ ]] || die "an interactive ssh needs one worker (--worker N)"
    tpu_vm ssh "$TPU_NAME" "--zone=$ZONE" "--worker=${WORKER:-0}"
  fi
}

cmd_delete() {
  require TPU_NAME:name ZONE:zone
  local quiet=()
  if ((YES)); then quiet=(--quiet); fi
  if ((QUEUED)); then
    queued_resources delete "$TPU_NAME" "--zone=$ZONE" --force "${quiet[@]}"
  else
    tpu_vm delete "$TPU_NAME" "--zone=$ZONE" "${quiet[@]}"
  fi
}

# ------------------------------------------------------------------------------------------ parsing

VALUE=""
NSHIFT=1
# The value of an option given as --opt=value or --opt value.
take() {
  if [[ $1 == *=* ]]; then
    VALUE=${1#*=}
    NSHIFT=1
  elif (($# >= 2)); then
    VALUE=$2
    NSHIFT=2
  else
    die "$1 needs a value"
  fi
}

main() {
  local arg
  while (($#)); do
    NSHIFT=1
    case $1 in
      -h | --help) SUBCOMMAND=help ;;
      --dry-run) DRY_RUN=1 ;;
      --spot) SPOT=1 ;;
      --queued) QUEUED=1 ;;
      --yes) YES=1 ;;
      --force) FORCE=1 ;;
      --no-follow) FOLLOW=0 ;;
      --name | --name=*) take "$@" && TPU_NAME=$VALUE ;;
      --zone | --zone=*) take "$@" && ZONE=$VALUE ;;
      --project | --project=*) take "$@" && PROJECT=$VALUE ;;
      --accelerator | --accelerator=*) take "$@" && ACCELERATOR=$VALUE ;;
      --runtime-version | --runtime-version=*) take "$@" && RUNTIME_VERSION=$VALUE ;;
      --remote-dir | --remote-dir=*) take "$@" && REMOTE_DIR=$VALUE ;;
      --log-dir | --log-dir=*) take "$@" && LOG_DIR=$VALUE ;;
      --python | --python=*) take "$@" && PYTHON=$VALUE ;;
      --worker | --worker=*) take "$@" && WORKER=$VALUE ;;
      --lines | --lines=*) take "$@" && LINES=$VALUE ;;
      --wait | --wait=*) take "$@" && WAIT=$VALUE ;;
      --config | --config=*) take "$@" && CONFIG=$VALUE ;;
      --workdir | --workdir=*) take "$@" && WORKDIR=$VALUE ;;
      --bucket | --bucket=*) take "$@" && BUCKET=$VALUE ;;
      --mount | --mount=*) take "$@" && MOUNT=$VALUE ;;
      --run-name | --run-name=*) take "$@" && RUN_NAME=$VALUE ;;
      --env | --env=*)
        take "$@"
        [[ $VALUE =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env wants NAME=VALUE, got '$VALUE'"
        ENV_ARGS+=("$VALUE")
        ;;
      --config.*=*) TRAIN_ARGS+=("$1") ;;
      --config.*) die "$1: pjax overrides are written --config.KEY=VALUE" ;;
      --)
        shift
        PASSTHROUGH=("$@")
        # --dry-run typed after '--' still means: run nothing.
        for arg in "$@"; do [[ $arg == --dry-run ]] && DRY_RUN=1; done
        break
        ;;
      -*) die "unknown option $1 (see '$PROG help')" ;;
      *)
        [[ -z $SUBCOMMAND ]] || die "one subcommand at a time: got '$SUBCOMMAND' and '$1'"
        SUBCOMMAND=$1
        ;;
    esac
    shift "$NSHIFT"
  done
  is_flag_value "$SPOT" || die "TPU_SPOT must be 0 or 1, got '$SPOT'"
  is_flag_value "$QUEUED" || die "TPU_QUEUED must be 0 or 1, got '$QUEUED'"
  if [[ -n $PROJECT ]]; then PROJECT_ARGS=("--project=$PROJECT"); fi
  [[ -z $WORKER || $WORKER == all || $WORKER =~ ^[0-9]+$ ]] || die "--worker wants a number or 'all'"
  if [[ $SUBCOMMAND != launch && $SUBCOMMAND != run ]]; then
    ((${#TRAIN_ARGS[@]} + ${#ENV_ARGS[@]} == 0)) && [[ -z $CONFIG ]] ||
      die "--config, --config.KEY=VALUE and --env are for launch only"
  fi
  if ((${#PASSTHROUGH[@]})) && [[ ! $SUBCOMMAND =~ ^(create|launch|run|ssh)$ ]]; then
    die "'-- ...' arguments are for create, launch and ssh only"
  fi
  case $SUBCOMMAND in
    create) cmd_create ;;
    install) cmd_install ;;
    mount) cmd_mount ;;
    launch | run) cmd_launch ;;
    logs) cmd_logs ;;
    status) cmd_status ;;
    stop) cmd_stop ;;
    ssh) cmd_ssh ;;
    delete) cmd_delete ;;
    help) usage ;;
    "") usage >&2 && exit 2 ;;
    *) die "unknown subcommand '$SUBCOMMAND' (see '$PROG help')" ;;
  esac
}

main "$@"
