// KafkaReady waits until the Kafka cluster at a bootstrap address answers
// admin requests: it describes the cluster (at least one broker and an active
// controller) and lists its topics, retrying until a deadline. scripts/kafka.sh
// runs it as a single-file Java program on the broker's own classpath, so it
// needs nothing but the jars Maven resolved.
//
//   java -cp 'libs/*' KafkaReady.java BOOTSTRAP TIMEOUT_SECONDS [BROKERS]
//
// Exit status 0 once the cluster answers with at least BROKERS brokers
// (default 1), 1 when the deadline passes.

import java.time.Duration;
import java.time.Instant;
import java.util.Collection;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.DescribeClusterResult;
import org.apache.kafka.common.Node;

public class KafkaReady {
    public static void main(String[] args) throws Exception {
        if (args.length != 2 && args.length != 3) {
            System.err.println("usage: KafkaReady BOOTSTRAP TIMEOUT_SECONDS [BROKERS]");
            System.exit(2);
        }
        int want = args.length == 3 ? Integer.parseInt(args[2]) : 1;
        String bootstrap = args[0];
        Instant deadline = Instant.now().plusSeconds(Long.parseLong(args[1]));
        Properties props = new Properties();
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "3000");
        props.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "5000");
        props.put(AdminClientConfig.RECONNECT_BACKOFF_MS_CONFIG, "100");
        props.put(AdminClientConfig.RECONNECT_BACKOFF_MAX_MS_CONFIG, "500");
        props.put(AdminClientConfig.CLIENT_ID_CONFIG, "kafka-ready-probe");
        String last = "no answer yet";
        try (Admin admin = Admin.create(props)) {
            while (Instant.now().isBefore(deadline)) {
                try {
                    DescribeClusterResult cluster = admin.describeCluster();
                    Collection<Node> nodes = cluster.nodes().get(5, TimeUnit.SECONDS);
                    Node controller = cluster.controller().get(5, TimeUnit.SECONDS);
                    String id = cluster.clusterId().get(5, TimeUnit.SECONDS);
                    Set<String> topics = admin.listTopics().names().get(5, TimeUnit.SECONDS);
                    if (nodes.size() >= want && controller != null && !controller.isEmpty()) {
                        System.out.printf("kafka: cluster %s answers at %s: %d broker(s), %d topic(s)%n",
                                id, bootstrap, nodes.size(), topics.size());
                        return;
                    }
                    last = "cluster has " + nodes.size() + " of " + want + " broker(s), or no controller yet";
                } catch (Exception e) {
                    Throwable cause = e.getCause() != null ? e.getCause() : e;
                    last = cause.getClass().getSimpleName() + ": " + cause.getMessage();
                }
                Thread.sleep(Duration.ofMillis(250).toMillis());
            }
        }
        System.err.println("kafka: no answer from " + bootstrap + " before the deadline: " + last);
        System.exit(1);
    }
}
