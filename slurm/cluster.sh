#!/usr/bin/env bash
# A real single-host SLURM cluster for tests and laptops: munged, MariaDB, slurmdbd, slurmctld and two
# node daemons (n1, n2) on this machine, without systemd.
#
#   slurm/cluster.sh install          # Debian packages (as root; a no-op when present)
#   slurm/cluster.sh start [STATE]    # idempotent; prints the line to source: export SLURM_CONF=...
#   slurm/cluster.sh stop [STATE]     # by PID files only
#   slurm/cluster.sh status [STATE]
#
# STATE (default $LTBENCH_SLURM_STATE or /tmp/ltbench-slurm) holds every config, log, PID file and
# database; a fresh STATE restarts job ids at 1. The settings it writes: accounting
# through slurmdbd (sacct works, so submitit sees jobs killed outside Python), fast scheduling,
# cred_expire=5 (quick requeue), and real preemption: partition `high` (PriorityTier 10) requeues jobs
# of the default partition `debug`, sending them their signal first (preempt_send_user_signal) and
# giving them GraceTime=10 s to checkpoint before they are stopped.
set -euo pipefail

cmd=${1:-status}
STATE=$(realpath -m "${2:-${LTBENCH_SLURM_STATE:-/tmp/ltbench-slurm}}")
# ctld, dbd, mysql, n1, n2 = base .. base+4; derived from STATE so that clusters of different
# checkouts can run side by side
PORT_BASE=${LTBENCH_SLURM_PORT_BASE:-$((20000 + $(echo "$STATE" | cksum | cut -d' ' -f1) % 2000 * 5))}
CTLD_PORT=$PORT_BASE DBD_PORT=$((PORT_BASE + 1)) DB_PORT=$((PORT_BASE + 2))
N1_PORT=$((PORT_BASE + 3)) N2_PORT=$((PORT_BASE + 4))
SOCK=$STATE/munge/munge.socket.2
CPUS=$(nproc)
PACKAGES="munge slurmctld slurmd slurm-client slurmdbd mariadb-server"

die() { echo "slurm/cluster.sh: $*" >&2; exit 1; }
alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

install() {
    local missing=""
    for b in munged slurmctld slurmd slurmdbd sbatch sacct mariadbd; do
        command -v "$b" >/dev/null || missing=1
    done
    [[ -z $missing ]] && return 0
    [[ $(id -u) == 0 ]] || die "SLURM is not installed and this is not root: apt-get install -y $PACKAGES"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $PACKAGES >/dev/null
}

write_configs() {
    mkdir -p "$STATE"/{munge,mysql,ctld,dbd,d/n1,d/n2,log}
    chmod 755 "$STATE" "$STATE/munge"   # munged: the socket directory must be world-searchable
    if [[ ! -f $STATE/munge/munge.key ]]; then
        dd if=/dev/urandom bs=1 count=1024 of="$STATE/munge/munge.key" status=none
        chmod 400 "$STATE/munge/munge.key"
    fi
    local user; user=$(id -un)
    cat > "$STATE/slurm.conf" <<EOF
ClusterName=ltbench
SlurmctldHost=localhost
SlurmUser=$user
SlurmdUser=$user
SlurmctldPort=$CTLD_PORT
AuthType=auth/munge
AuthInfo=socket=$SOCK,cred_expire=5
CryptoType=crypto/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d/%n
SlurmctldPidFile=$STATE/ctld/slurmctld.pid
SlurmdPidFile=$STATE/d/%n/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
JobRequeue=1
ReturnToService=2
SchedulerParameters=sched_interval=2,bf_interval=2
MinJobAge=300
KillWait=5
InactiveLimit=0
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$SOCK
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=n1 NodeHostname=$(hostname) NodeAddr=127.0.0.1 Port=$N1_PORT CPUs=$CPUS RealMemory=4000 State=UNKNOWN
NodeName=n2 NodeHostname=$(hostname) NodeAddr=127.0.0.1 Port=$N2_PORT CPUs=$CPUS RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES PriorityTier=1 MaxTime=INFINITE OverSubscribe=NO GraceTime=10 State=UP
PartitionName=high Nodes=n1,n2 PriorityTier=10 MaxTime=INFINITE State=UP
EOF
    cat > "$STATE/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$SOCK
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=$user
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
PidFile=$STATE/dbd/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
EOF
    chmod 600 "$STATE/slurmdbd.conf"   # slurmdbd refuses a readable one (it holds the DB password)
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local t=$1 what=$2; shift 2
    for _ in $(seq $((t * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
    die "$what did not come up within ${t}s (logs: $STATE/log)"
}

start() {
    install
    write_configs
    export SLURM_CONF=$STATE/slurm.conf
    # Node names must resolve for multi-node DDP (MASTER_ADDR=n1).
    if ! getent hosts n1 >/dev/null || ! getent hosts n2 >/dev/null; then
        if [[ -w /etc/hosts ]]; then echo "127.0.0.1 n1 n2" >> /etc/hosts; fi
    fi
    if ! alive "$STATE/munge/munged.pid"; then
        munged --force --socket="$SOCK" --key-file="$STATE/munge/munge.key" \
            --pid-file="$STATE/munge/munged.pid" --log-file="$STATE/log/munged.log" \
            --seed-file="$STATE/munge/munge.seed"
    fi
    if ! alive "$STATE/mysql/mariadb.pid"; then
        if [[ ! -d $STATE/mysql/data/mysql ]]; then
            mariadb-install-db --datadir="$STATE/mysql/data" --user="$(id -un)" \
                --auth-root-authentication-method=socket >"$STATE/log/mariadb-install.log" 2>&1
        fi
        mariadbd --datadir="$STATE/mysql/data" --socket="$STATE/mysql/mysql.sock" --port=$DB_PORT \
            --bind-address=127.0.0.1 --pid-file="$STATE/mysql/mariadb.pid" --user="$(id -un)" \
            --log-error="$STATE/log/mariadb.log" --skip-grant-tables=0 >/dev/null 2>&1 &
        wait_for 30 MariaDB mariadb -S "$STATE/mysql/mysql.sock" -e "SELECT 1"
        mariadb -S "$STATE/mysql/mysql.sock" -e "CREATE USER IF NOT EXISTS 'slurm'@'%' IDENTIFIED BY 'slurm';
            CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'%'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
    fi
    if ! alive "$STATE/dbd/slurmdbd.pid"; then
        slurmdbd   # reads slurmdbd.conf beside $SLURM_CONF
        wait_for 30 slurmdbd sacctmgr -i show cluster
    fi
    if ! sacctmgr -n show cluster format=cluster | grep -qw ltbench; then
        sacctmgr -i add cluster ltbench >/dev/null
    fi
    if ! alive "$STATE/ctld/slurmctld.pid"; then
        slurmctld -f "$STATE/slurm.conf"
        wait_for 30 slurmctld scontrol ping
    fi
    for n in n1 n2; do
        if ! alive "$STATE/d/$n/slurmd.pid"; then
            slurmd -f "$STATE/slurm.conf" -N $n
        fi
    done
    wait_for 60 "the nodes n1 n2" bash -c "[[ \$(sinfo -h -p debug -o %T -N | grep -cE 'idle|mixed|alloc') == 2 ]]"
    echo "export SLURM_CONF=$STATE/slurm.conf"
}

stop() {
    local pidfiles=("$STATE"/d/n1/slurmd.pid "$STATE"/d/n2/slurmd.pid "$STATE"/ctld/slurmctld.pid
                    "$STATE"/dbd/slurmdbd.pid "$STATE"/mysql/mariadb.pid "$STATE"/munge/munged.pid)
    for f in "${pidfiles[@]}"; do
        if alive "$f"; then
            local pid; pid=$(cat "$f")
            kill "$pid"
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            kill -9 "$pid" 2>/dev/null || true
        fi
    done
    echo "stopped the cluster in $STATE"
}

status() {
    export SLURM_CONF=$STATE/slurm.conf
    for f in munge/munged.pid mysql/mariadb.pid dbd/slurmdbd.pid ctld/slurmctld.pid d/n1/slurmd.pid d/n2/slurmd.pid; do
        if alive "$STATE/$f"; then echo "up    $f"; else echo "down  $f"; fi
    done
    if alive "$STATE/ctld/slurmctld.pid"; then sinfo; fi
}

case $cmd in
    install) install ;;
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) die "unknown command $cmd (install, start, stop, status)" ;;
esac
