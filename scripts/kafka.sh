#!/usr/bin/env bash
# A single-node Apache Kafka for the integration tests: one JVM that is both
# broker and KRaft controller, listening on 127.0.0.1 only. Needs nothing but
# Java 17+ and Maven: the broker's jars come from Maven Central
# (org.apache.kafka:kafka_2.13 and its runtime dependencies, see
# scripts/kafka/pom.xml) into .cache/kafka, which git ignores.
#
#   scripts/kafka.sh up      fresh cluster (new storage), started and answering;
#                            reuses a broker that is already running
#   scripts/kafka.sh down    stop the broker and delete its storage
#   scripts/kafka.sh stop    stop the broker (SIGTERM), keep its storage
#   scripts/kafka.sh kill    stop the broker with SIGKILL, keep its storage
#   scripts/kafka.sh start   start the broker again on the storage it had
#                            (a fresh cluster when there is none)
#   scripts/kafka.sh status  say whether it runs; exit 0 when it does
#   scripts/kafka.sh addr    print the bootstrap address of the running broker
#   scripts/kafka.sh logs [N]  the last N (default 200) lines of its logs
#   scripts/kafka.sh fetch   resolve the jars only
#
# Environment (defaults in brackets):
#   KAFKA_VERSION            Apache Kafka version [4.4.0, or that of the existing
#                            cluster]; 4.0.0 to 4.4.0 are served by Maven Central
#   KAFKA_PORT               client listener port on 127.0.0.1 [19092]
#   KAFKA_CONTROLLER_PORT    KRaft controller listener port [KAFKA_PORT+1]
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
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KAFKA_CACHE=${KAFKA_CACHE:-$ROOT/.cache/kafka}
RUN=$KAFKA_CACHE/run
# A cluster that exists (running, or stopped with its storage) keeps the
# version and ports it was created with, unless they are set explicitly.
if [[ -f $RUN/env ]]; then
	# shellcheck disable=SC1091
	source <(grep -E '^RUN_(VERSION|PORT|CONTROLLER_PORT)=[0-9.]+$' "$RUN/env")
fi
KAFKA_VERSION=${KAFKA_VERSION:-${RUN_VERSION:-4.4.0}}
KAFKA_PORT=${KAFKA_PORT:-${RUN_PORT:-19092}}
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-${RUN_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}}
KAFKA_HEAP=${KAFKA_HEAP:-512m}
KAFKA_START_TIMEOUT=${KAFKA_START_TIMEOUT:-120}
KAFKA_STOP_TIMEOUT=${KAFKA_STOP_TIMEOUT:-60}
MVN=${MVN:-mvn}

HOST=127.0.0.1
ADDR=$HOST:$KAFKA_PORT
LIBS=$KAFKA_CACHE/$KAFKA_VERSION/libs
DATA=$RUN/data
CONFIG=$RUN/server.properties
PIDFILE=$RUN/kafka.pid
LOGS=$KAFKA_CACHE/logs
HERE=$ROOT/scripts/kafka

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

write_config() {
	mkdir -p "$RUN" "$DATA"
	cat >"$CONFIG" <<EOF
# Written by scripts/kafka.sh: a single node that is both broker and KRaft
# controller, on $HOST only, tuned for tests.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$DATA

# The product creates every topic it uses; a test that relies on
# auto-creation must fail here as it would on a production cluster.
auto.create.topics.enable=false
num.partitions=1
default.replication.factor=1
min.insync.replicas=1

# One node: every internal topic has one replica.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1

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
	printf 'RUN_VERSION=%s\nRUN_PORT=%s\nRUN_CONTROLLER_PORT=%s\n' \
		"$KAFKA_VERSION" "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" >"$RUN/env"
}

format() {
	local id
	# A cluster id is 16 random bytes in unpadded base64url, as
	# `kafka-storage random-uuid` prints.
	id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
	say "formatting storage in $DATA (cluster id $id)"
	if ! java -cp "$LIBS/*" -Dlog4j2.configurationFile="$HERE/log4j2.properties" \
		-Dkafka.logs.dir="$LOGS" -Dkafka.log.file=format.log \
		kafka.tools.StorageTool format -t "$id" -c "$CONFIG" >"$LOGS/format.out" 2>&1; then
		cat "$LOGS/format.out" >&2
		die "formatting the storage failed"
	fi
}

launch() {
	local p
	if port_open "$KAFKA_PORT" || port_open "$KAFKA_CONTROLLER_PORT"; then
		die "port $KAFKA_PORT or $KAFKA_CONTROLLER_PORT on $HOST is taken by another process (set KAFKA_PORT)"
	fi
	mkdir -p "$LOGS"
	say "starting Apache Kafka $KAFKA_VERSION on $ADDR (logs: $LOGS)"
	# Started in the background with no terminal: it outlives this script
	# and make, and `down` stops it through the pid file. It must not keep
	# the lock's descriptor (9) open.
	nohup java -Xms256m -Xmx"$KAFKA_HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
		-XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
		-Dlog4j2.configurationFile="$HERE/log4j2.properties" -Dkafka.logs.dir="$LOGS" \
		-cp "$LIBS/*" kafka.Kafka "$CONFIG" >>"$LOGS/kafka.out" 2>&1 </dev/null 9>&- &
	p=$!
	echo "$p" >"$PIDFILE"
	wait_ready "$p"
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

# wait_ready polls the port, then asks the cluster itself (KafkaReady.java),
# all within KAFKA_START_TIMEOUT; it fails at once if the JVM exits.
wait_ready() {
	local p=$1 start=$SECONDS
	while ! port_open "$KAFKA_PORT"; do
		if ! kill -0 "$p" 2>/dev/null; then
			logs 60
			die "the broker exited during start-up"
		fi
		if ((SECONDS - start >= KAFKA_START_TIMEOUT)); then
			logs 60
			die "the broker did not open $ADDR within ${KAFKA_START_TIMEOUT}s"
		fi
		sleep 0.2
	done
	local left=$((KAFKA_START_TIMEOUT - (SECONDS - start)))
	((left > 5)) || left=5
	if ! java -cp "$(probe_classes):$LIBS/*" -Dlog4j2.configurationFile="$HERE/log4j2.properties" \
		-Dkafka.logs.dir="$LOGS" -Dkafka.log.file=probe.log \
		KafkaReady "$ADDR" "$left" >&2; then
		logs 60
		die "the broker does not answer on $ADDR"
	fi
	say "ready in $((SECONDS - start))s"
}

stop() {
	local sig=${1:-TERM} p
	if ! p=$(pid); then
		rm -f "$PIDFILE"
		say "not running"
		return
	fi
	say "stopping the broker (pid $p, SIG$sig)"
	kill -"$sig" "$p" 2>/dev/null || true
	local start=$SECONDS
	while kill -0 "$p" 2>/dev/null; do
		if ((SECONDS - start >= KAFKA_STOP_TIMEOUT)); then
			say "still running after ${KAFKA_STOP_TIMEOUT}s: SIGKILL"
			kill -KILL "$p" 2>/dev/null || true
		fi
		sleep 0.1
	done
	rm -f "$PIDFILE"
	say "stopped in $((SECONDS - start))s"
}

# same_cluster fails when the cluster in $RUN was made with another version
# or ports than those asked for now.
same_cluster() {
	if [[ ${RUN_VERSION:-} != "$KAFKA_VERSION" || ${RUN_PORT:-} != "$KAFKA_PORT" || ${RUN_CONTROLLER_PORT:-} != "$KAFKA_CONTROLLER_PORT" ]]; then
		die "the cluster in $RUN is Kafka ${RUN_VERSION:-?} on $HOST:${RUN_PORT:-?}, not $KAFKA_VERSION on $ADDR: run '$0 down' first"
	fi
}

up() {
	if pid >/dev/null; then
		same_cluster
		say "already running (pid $(pid)); reusing it"
		echo "$ADDR"
		return
	fi
	fetch
	rm -rf "$RUN" "$LOGS"/server.log "$LOGS"/kafka.out "$LOGS"/probe.log "$LOGS"/format.*
	write_config
	format
	launch
	echo "$ADDR"
}

start() {
	if pid >/dev/null; then
		same_cluster
		say "already running (pid $(pid))"
		echo "$ADDR"
		return
	fi
	if [[ ! -f $DATA/meta.properties || ! -f $CONFIG ]]; then
		up
		return
	fi
	same_cluster
	fetch
	launch
	echo "$ADDR"
}

down() {
	stop TERM
	rm -rf "$RUN"
}

status() {
	local p
	if p=$(pid); then
		echo "kafka: Apache Kafka $KAFKA_VERSION running on $ADDR (pid $p)"
		return 0
	fi
	echo "kafka: not running"
	return 1
}

addr() {
	pid >/dev/null || die "no broker is running: run 'make kafka-up' (scripts/kafka.sh up) first"
	echo "$ADDR"
}

logs() {
	local n=${1:-200} f
	for f in "$LOGS/kafka.out" "$LOGS/server.log"; do
		if [[ -s $f ]]; then
			echo "----- last $n lines of $f" >&2
			tail -n "$n" "$f" >&2
		fi
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
up | down | start | stop | kill | fetch) lock ;;
esac

case ${1:-} in
up) up ;;
down) down ;;
start) start ;;
stop) stop TERM ;;
kill) stop KILL ;;
status) status ;;
addr) addr ;;
logs) logs "${2:-200}" ;;
fetch) fetch ;;
*)
	sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
	exit 2
	;;
esac
