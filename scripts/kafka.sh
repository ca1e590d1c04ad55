#!/usr/bin/env bash
# Apache Kafka for the integration tests: by default a single node, one JVM
# that is both broker and KRaft controller; with KAFKA_NODES=3 a cluster of
# three such nodes (a three-voter KRaft quorum, topics replicated three times
# with min.insync.replicas 2). Everything listens on 127.0.0.1 only. Needs nothing but
# Java 17+ and Maven: the broker's jars come from Maven Central
# (org.apache.kafka:kafka_2.13 and its runtime dependencies, see
# scripts/kafka/pom.xml) into .cache/kafka, which git ignores.
#
#   scripts/kafka.sh up      fresh cluster (new storage), started and answering;
#                            reuses a broker that is already running
#   scripts/kafka.sh down    stop the broker and delete its storage
#   scripts/kafka.sh stop [ID]   stop the broker (SIGTERM), keep its storage
#   scripts/kafka.sh kill [ID]   stop the broker with SIGKILL, keep its storage
#   scripts/kafka.sh start [ID]  start the broker again on the storage it had
#                            (a fresh cluster when there is none)
#   scripts/kafka.sh status  say whether it runs; exit 0 when it does
#   scripts/kafka.sh addr    print the bootstrap address of the running broker
#                            (of a cluster: every node's, comma-separated)
#   scripts/kafka.sh logs [N]  the last N (default 200) lines of its logs
#   scripts/kafka.sh fetch   resolve the jars only
#
# With a cluster, stop, kill and start act on every node, or on node ID only
# (1 to KAFKA_NODES; a node's id is also its Kafka broker id, and its client
# port is KAFKA_PORT+ID-1); status exits 0 when every node runs, and addr
# answers while at least one does.
#
# Environment (defaults in brackets):
#   KAFKA_NODES              nodes: 1, or 3 (or more) for a cluster [1; unset,
#                            the commands other than up act on the cluster
#                            when one exists and no single node does]. A
#                            cluster has its own storage, logs and ports, so
#                            that it can run beside the single node
#   KAFKA_VERSION            Apache Kafka version [4.4.0, or that of the existing
#                            cluster]; 4.0.0 to 4.4.0 are served by Maven Central
#   KAFKA_PORT               client listener port on 127.0.0.1 [19092; a
#                            cluster's first node: 19192, then 19193, 19194]
#   KAFKA_CONTROLLER_PORT    KRaft controller listener port [KAFKA_PORT+1; a
#                            cluster's first node: KAFKA_PORT+KAFKA_NODES,
#                            then the next ports: 19195 to 19197]
#   KAFKA_HEAP               JVM heap [512m]
#   KAFKA_EXTRA_PROPERTIES   broker settings added to (and overriding) those
#                            below, space-separated key=value, for a new cluster:
#                            e.g. "message.max.bytes=1048588" for the default limit
#   KAFKA_CACHE              where jars, storage and logs go [<repo>/.cache/kafka]
#   KAFKA_START_TIMEOUT      seconds to wait for the broker to answer [120]
#   KAFKA_STOP_TIMEOUT       seconds to wait for a graceful stop before SIGKILL [60]
#   MVN                      the Maven command [mvn]
#   MVN_ARGS                 more Maven arguments, e.g. -Dmaven.repo.local=DIR
#
# Layout under KAFKA_CACHE:
#   <version>/libs/          the broker's classpath (kept across runs)
#   run/                     server.properties, storage (data/), pid file, env
#                            (the version and ports the cluster was made with)
#   logs/                    server.log (broker), kafka.out (JVM stdout/stderr),
#                            probe.log (readiness probe), maven.log
#   cluster/                 a cluster's env, and node<ID>/ with each node's
#                            server.properties, data/ and pid file
#   cluster-logs/            probe.log, format.*, node<ID>/ with each node's
#                            server.log and kafka.out
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KAFKA_CACHE=${KAFKA_CACHE:-$ROOT/.cache/kafka}
# Unset, KAFKA_NODES means the single node, or the cluster when only a
# cluster exists (so that `addr`, `status` and `down` find it).
if [[ -z ${KAFKA_NODES:-} ]]; then
	KAFKA_NODES=1
	if [[ ${1:-} != up && ! -f $KAFKA_CACHE/run/env && -f $KAFKA_CACHE/cluster/env ]]; then
		KAFKA_NODES=$(sed -n 's/^RUN_NODES=\([0-9][0-9]*\)$/\1/p' "$KAFKA_CACHE/cluster/env")
		KAFKA_NODES=${KAFKA_NODES:-1}
	fi
fi
[[ $KAFKA_NODES =~ ^[1-9]$ ]] || {
	echo "kafka: KAFKA_NODES=$KAFKA_NODES: want 1 to 9 nodes" >&2
	exit 2
}
if ((KAFKA_NODES == 1)); then
	RUN=$KAFKA_CACHE/run
	LOGS=$KAFKA_CACHE/logs
	DEFAULT_PORT=19092
else
	RUN=$KAFKA_CACHE/cluster
	LOGS=$KAFKA_CACHE/cluster-logs
	DEFAULT_PORT=19192
fi
# A cluster that exists (running, or stopped with its storage) keeps the
# version and ports it was created with, unless they are set explicitly.
if [[ -f $RUN/env ]]; then
	# shellcheck disable=SC1091
	source <(grep -E '^RUN_(VERSION|PORT|CONTROLLER_PORT|NODES)=[0-9.]+$' "$RUN/env")
fi
KAFKA_VERSION=${KAFKA_VERSION:-${RUN_VERSION:-4.4.0}}
KAFKA_PORT=${KAFKA_PORT:-${RUN_PORT:-$DEFAULT_PORT}}
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-${RUN_CONTROLLER_PORT:-$((KAFKA_PORT + KAFKA_NODES))}}
KAFKA_HEAP=${KAFKA_HEAP:-512m}
KAFKA_START_TIMEOUT=${KAFKA_START_TIMEOUT:-120}
KAFKA_STOP_TIMEOUT=${KAFKA_STOP_TIMEOUT:-60}
MVN=${MVN:-mvn}

HOST=127.0.0.1
LIBS=$KAFKA_CACHE/$KAFKA_VERSION/libs
HERE=$ROOT/scripts/kafka
# ADDR is the bootstrap list: every node's client address.
ADDR=
for ((n = 1; n <= KAFKA_NODES; n++)); do
	ADDR+=${ADDR:+,}$HOST:$((KAFKA_PORT + n - 1))
done

# node N points the per-node variables at node N (1 to KAFKA_NODES). The
# single node keeps the layout it always had, directly under run/ and logs/.
node() {
	NODE=$1
	PORT=$((KAFKA_PORT + NODE - 1))
	CPORT=$((KAFKA_CONTROLLER_PORT + NODE - 1))
	if ((KAFKA_NODES == 1)); then
		NODE_RUN=$RUN
		NODE_LOGS=$LOGS
	else
		NODE_RUN=$RUN/node$NODE
		NODE_LOGS=$LOGS/node$NODE
	fi
	DATA=$NODE_RUN/data
	CONFIG=$NODE_RUN/server.properties
	PIDFILE=$NODE_RUN/kafka.pid
}
node 1

# nodes prints the node ids a command acts on: $1 when given (checked), else
# all of them.
nodes() {
	if [[ -n ${1:-} ]]; then
		[[ $1 =~ ^[0-9]+$ ]] && (($1 >= 1 && $1 <= KAFKA_NODES)) || die "no node $1: the cluster has nodes 1 to $KAFKA_NODES"
		echo "$1"
		return
	fi
	seq 1 "$KAFKA_NODES"
}

say() { echo "kafka: $*" >&2; }
die() {
	say "$*"
	exit 1
}

# fetch resolves kafka_2.13 and its runtime dependencies into $LIBS, once per
# version. The jars land in a temporary directory first, so that an
# interrupted download never leaves a half-filled classpath behind.
fetch() {
	if [[ -f $LIBS/.complete ]]; then
		return
	fi
	command -v javac >/dev/null || die "javac is not on PATH (a Java 17 or later JDK is needed)"
	command -v "$MVN" >/dev/null || die "$MVN is not on PATH (Maven is needed to fetch Kafka)"
	mkdir -p "$LOGS" "$KAFKA_CACHE/$KAFKA_VERSION"
	local tmp=$KAFKA_CACHE/$KAFKA_VERSION/libs.tmp
	rm -rf "$tmp"
	say "resolving org.apache.kafka:kafka_2.13:$KAFKA_VERSION with Maven (log: $LOGS/maven.log)"
	local extra=()
	read -r -a extra <<<"${MVN_ARGS:-}"
	if ! "$MVN" -B -ntp "${extra[@]}" -f "$HERE/pom.xml" \
		-Dkafka.version="$KAFKA_VERSION" \
		dependency:copy-dependencies \
		-DincludeScope=runtime -DoutputDirectory="$tmp" >"$LOGS/maven.log" 2>&1; then
		tail -n 40 "$LOGS/maven.log" >&2
		die "Maven could not resolve Kafka $KAFKA_VERSION"
	fi
	[[ -f $tmp/kafka_2.13-$KAFKA_VERSION.jar ]] || die "Maven did not deliver kafka_2.13-$KAFKA_VERSION.jar"
	rm -rf "$LIBS"
	mv "$tmp" "$LIBS"
	touch "$LIBS/.complete"
}

# pid prints the pid of our broker when it runs: the pid file names a live
# process whose command line is kafka.Kafka on our server.properties.
pid() {
	[[ -f $PIDFILE ]] || return 1
	local p
	p=$(<"$PIDFILE")
	[[ $p =~ ^[0-9]+$ ]] || return 1
	local cmd
	if [[ -d /proc ]]; then
		[[ -r /proc/$p/cmdline ]] || return 1
		cmd=$(tr '\0' ' ' <"/proc/$p/cmdline")
	else
		cmd=$(ps -p "$p" -o args= 2>/dev/null) || return 1
	fi
	[[ $cmd == *kafka.Kafka*"$CONFIG"* ]] || return 1
	echo "$p"
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# write_config writes the current node's server.properties.
write_config() {
	mkdir -p "$RUN" "$DATA"
	local voters="" i rf isr what
	for ((i = 1; i <= KAFKA_NODES; i++)); do
		voters+=${voters:+,}$i@$HOST:$((KAFKA_CONTROLLER_PORT + i - 1))
	done
	# Replication: three copies where there are three nodes, and a write
	# acknowledged by all in-sync replicas needs two of them, so that one
	# node may fail without losing an acknowledged record or refusing writes.
	rf=$((KAFKA_NODES < 3 ? KAFKA_NODES : 3))
	isr=$((rf < 3 ? 1 : 2))
	if ((KAFKA_NODES == 1)); then
		what="a single node that is both broker and KRaft controller"
	else
		what="node $NODE of $KAFKA_NODES, each both broker and KRaft controller"
	fi
	cat >"$CONFIG" <<EOF
# Written by scripts/kafka.sh: $what, on $HOST only, tuned for tests.
process.roles=broker,controller
node.id=$NODE
controller.quorum.voters=$voters
listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CPORT
advertised.listeners=PLAINTEXT://$HOST:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$DATA

# The product creates every topic it uses; a test that relies on
# auto-creation must fail here as it would on a production cluster.
auto.create.topics.enable=false
num.partitions=1
default.replication.factor=$rf
min.insync.replicas=$isr

# Internal topics: as many replicas as topics get by default.
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr

# Consumer groups form at once instead of waiting 3 s for more members.
group.initial.rebalance.delay.ms=0

# Records up to 8 MiB (a 1 MiB message with its headers must pass).
message.max.bytes=8388608
replica.fetch.max.bytes=8388608

num.network.threads=2
num.io.threads=4
EOF
	if [[ -n ${KAFKA_EXTRA_PROPERTIES:-} ]]; then
		# Later entries win: these override the settings above.
		{
			echo
			echo "# KAFKA_EXTRA_PROPERTIES"
			tr ' ' '\n' <<<"$KAFKA_EXTRA_PROPERTIES" | grep -v '^$'
		} >>"$CONFIG"
	fi
	printf 'RUN_VERSION=%s\nRUN_PORT=%s\nRUN_CONTROLLER_PORT=%s\nRUN_NODES=%s\n' \
		"$KAFKA_VERSION" "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" "$KAFKA_NODES" >"$RUN/env"
}

# format formats the storage of the current node with cluster id $1.
format() {
	local id=$1
	say "formatting storage in $DATA (cluster id $id)"
	if ! java -cp "$LIBS/*" -Dlog4j2.configurationFile="$HERE/log4j2.properties" \
		-Dkafka.logs.dir="$LOGS" -Dkafka.log.file=format.log \
		kafka.tools.StorageTool format -t "$id" -c "$CONFIG" >"$LOGS/format.out" 2>&1; then
		cat "$LOGS/format.out" >&2
		die "formatting the storage failed"
	fi
}

# format_all writes the config of every node and formats its storage, all
# with one new cluster id.
format_all() {
	local id n
	mkdir -p "$LOGS"
	# A cluster id is 16 random bytes in unpadded base64url, as
	# `kafka-storage random-uuid` prints.
	id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
	for n in $(nodes); do
		node "$n"
		write_config
		format "$id"
	done
}

# launch starts the given nodes (all when none is given) and waits until
# the cluster answers with all of its brokers.
launch() {
	local n pids=()
	for n in $(nodes "${1:-}"); do
		node "$n"
		if port_open "$PORT" || port_open "$CPORT"; then
			die "port $PORT or $CPORT on $HOST is taken by another process (set KAFKA_PORT)"
		fi
	done
	for n in $(nodes "${1:-}"); do
		node "$n"
		mkdir -p "$NODE_LOGS"
		if ((KAFKA_NODES == 1)); then
			say "starting Apache Kafka $KAFKA_VERSION on $ADDR (logs: $NODE_LOGS)"
		else
			say "starting Apache Kafka $KAFKA_VERSION node $n of $KAFKA_NODES on $HOST:$PORT (logs: $NODE_LOGS)"
		fi
		# Started in the background with no terminal: it outlives this script
		# and make, and `down` stops it through the pid file. It must not keep
		# the lock's descriptor (9) open.
		nohup java -Xms256m -Xmx"$KAFKA_HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
			-XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
			-Dlog4j2.configurationFile="$HERE/log4j2.properties" -Dkafka.logs.dir="$NODE_LOGS" \
			-cp "$LIBS/*" kafka.Kafka "$CONFIG" >>"$NODE_LOGS/kafka.out" 2>&1 </dev/null 9>&- &
		echo "$!" >"$PIDFILE"
		pids+=("$n:$!")
	done
	wait_ready "${pids[@]}"
}

# probe_classes compiles KafkaReady.java against the broker's jars, once per
# version and whenever the source changes, and prints the class directory.
probe_classes() {
	local dir=$KAFKA_CACHE/$KAFKA_VERSION/probe
	if [[ ! -f $dir/KafkaReady.class || $HERE/KafkaReady.java -nt $dir/KafkaReady.class ]]; then
		mkdir -p "$dir"
		javac -nowarn -cp "$LIBS/*" -d "$dir" "$HERE/KafkaReady.java" >&2 || die "compiling KafkaReady.java failed"
	fi
	echo "$dir"
}

# wait_ready polls the ports of the nodes started (each argument is
# ID:PID), then asks the cluster itself (KafkaReady.java) until it answers
# with every broker, all within KAFKA_START_TIMEOUT; it fails at once if a
# JVM exits.
wait_ready() {
	local start=$SECONDS np n p
	for np in "$@"; do
		n=${np%%:*} p=${np#*:}
		node "$n"
		while ! port_open "$PORT"; do
			if ! kill -0 "$p" 2>/dev/null; then
				logs 60
				die "the broker on $HOST:$PORT exited during start-up"
			fi
			if ((SECONDS - start >= KAFKA_START_TIMEOUT)); then
				logs 60
				die "the broker did not open $HOST:$PORT within ${KAFKA_START_TIMEOUT}s"
			fi
			sleep 0.2
		done
	done
	local left=$((KAFKA_START_TIMEOUT - (SECONDS - start)))
	((left > 5)) || left=5
	if ! java -cp "$(probe_classes):$LIBS/*" -Dlog4j2.configurationFile="$HERE/log4j2.properties" \
		-Dkafka.logs.dir="$LOGS" -Dkafka.log.file=probe.log \
		KafkaReady "$ADDR" "$left" "$KAFKA_NODES" >&2; then
		logs 60
		die "the cluster does not answer on $ADDR with $KAFKA_NODES broker(s)"
	fi
	say "ready in $((SECONDS - start))s"
}

# stop stops the given node (all when none is given) with signal $1 and
# waits until they are gone (SIGKILL after KAFKA_STOP_TIMEOUT).
stop() {
	local sig=${1:-TERM} n p which np np2
	local -a stopping=()
	for n in $(nodes "${2:-}"); do
		node "$n"
		which="the broker"
		((KAFKA_NODES == 1)) || which="node $n ($HOST:$PORT)"
		if ! p=$(pid); then
			rm -f "$PIDFILE"
			say "$which: not running"
			continue
		fi
		say "stopping $which (pid $p, SIG$sig)"
		kill -"$sig" "$p" 2>/dev/null || true
		stopping+=("$n:$p")
	done
	local start=$SECONDS np killed=0
	for np in "${stopping[@]}"; do
		n=${np%%:*} p=${np#*:}
		while kill -0 "$p" 2>/dev/null; do
			if ((SECONDS - start >= KAFKA_STOP_TIMEOUT && !killed)); then
				say "still running after ${KAFKA_STOP_TIMEOUT}s: SIGKILL"
				killed=1
				for np2 in "${stopping[@]}"; do
					kill -KILL "${np2#*:}" 2>/dev/null || true
				done
			fi
			sleep 0.1
		done
		node "$n"
		rm -f "$PIDFILE"
	done
	((${#stopping[@]} == 0)) || say "stopped in $((SECONDS - start))s"
}

# same_cluster fails when the cluster in $RUN was made with another version,
# ports or node count than those asked for now.
same_cluster() {
	if [[ ${RUN_VERSION:-} != "$KAFKA_VERSION" || ${RUN_PORT:-} != "$KAFKA_PORT" || ${RUN_CONTROLLER_PORT:-} != "$KAFKA_CONTROLLER_PORT" || ${RUN_NODES:-1} != "$KAFKA_NODES" ]]; then
		die "the cluster in $RUN is Kafka ${RUN_VERSION:-?} on $HOST:${RUN_PORT:-?} (${RUN_NODES:-1} node(s)), not $KAFKA_VERSION on $ADDR: run '$0 down' first"
	fi
}

# running prints the ids of the nodes that run.
running() {
	local n
	for n in $(nodes); do
		node "$n"
		if pid >/dev/null; then echo "$n"; fi
	done
}

up() {
	local r
	r=$(running)
	if [[ -n $r ]]; then
		same_cluster
		if [[ $(wc -w <<<"$r") -lt $KAFKA_NODES ]]; then
			die "only node(s) $(tr '\n' ' ' <<<"$r")of the cluster in $RUN run: '$0 start' starts the others, '$0 down' removes it"
		fi
		node 1
		say "already running (pid $(pid)); reusing it"
		echo "$ADDR"
		return
	fi
	fetch
	rm -rf "$RUN" "$LOGS"/server.log "$LOGS"/kafka.out "$LOGS"/probe.log "$LOGS"/format.* "$LOGS"/node[0-9]*
	format_all
	launch
	echo "$ADDR"
}

# start starts node $1, or every node that does not run.
start() {
	local n todo=()
	for n in $(nodes "${1:-}"); do
		node "$n"
		if pid >/dev/null; then
			same_cluster
			if ((KAFKA_NODES == 1)); then
				say "already running (pid $(pid))"
			else
				say "node $n already running (pid $(pid))"
			fi
			continue
		fi
		if [[ ! -f $DATA/meta.properties || ! -f $CONFIG ]]; then
			if [[ -n $(running) ]]; then
				die "node $n has no storage while others run: run '$0 down', then '$0 up'"
			fi
			up
			return
		fi
		todo+=("$n")
	done
	if ((${#todo[@]} > 0)); then
		same_cluster
		fetch
		if ((${#todo[@]} == KAFKA_NODES)); then
			launch
		else
			for n in "${todo[@]}"; do
				launch "$n"
			done
		fi
	fi
	echo "$ADDR"
}

down() {
	stop TERM
	rm -rf "$RUN"
}

status() {
	local n p up=0
	for n in $(nodes); do
		node "$n"
		if p=$(pid); then
			up=$((up + 1))
			((KAFKA_NODES == 1)) || echo "kafka: node $n running on $HOST:$PORT (pid $p)"
		else
			((KAFKA_NODES == 1)) || echo "kafka: node $n not running ($HOST:$PORT)"
		fi
	done
	if ((up == KAFKA_NODES)); then
		if ((KAFKA_NODES == 1)); then
			node 1
			echo "kafka: Apache Kafka $KAFKA_VERSION running on $ADDR (pid $(pid))"
		else
			echo "kafka: Apache Kafka $KAFKA_VERSION, $KAFKA_NODES nodes running on $ADDR"
		fi
		return 0
	fi
	if ((up == 0)); then
		echo "kafka: not running"
	else
		echo "kafka: $up of $KAFKA_NODES nodes running"
	fi
	return 1
}

addr() {
	[[ -n $(running) ]] || die "no broker is running: run 'make kafka-up' (scripts/kafka.sh up) first"
	echo "$ADDR"
}

logs() {
	local lines=${1:-200} n f
	for n in $(nodes); do
		node "$n"
		for f in "$NODE_LOGS/kafka.out" "$NODE_LOGS/server.log"; do
			if [[ -s $f ]]; then
				echo "----- last $lines lines of $f" >&2
				tail -n "$lines" "$f" >&2
			fi
		done
	done
}

# One command at a time changes the broker (where flock exists).
lock() {
	mkdir -p "$KAFKA_CACHE"
	if command -v flock >/dev/null; then
		exec 9>"$KAFKA_CACHE/.lock"
		flock -w 300 9 || die "another scripts/kafka.sh holds $KAFKA_CACHE/.lock"
	fi
}

case ${1:-} in
start | stop | kill) [[ -z ${2:-} ]] || nodes "$2" >/dev/null ;;
esac
case ${1:-} in
up | down | start | stop | kill | fetch) lock ;;
esac

case ${1:-} in
up) up ;;
down) down ;;
start) start "${2:-}" ;;
stop) stop TERM "${2:-}" ;;
kill) stop KILL "${2:-}" ;;
status) status ;;
addr) addr ;;
logs) logs "${2:-200}" ;;
fetch) fetch ;;
*)
	sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
	exit 2
	;;
esac
