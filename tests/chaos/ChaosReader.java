import java.io.BufferedWriter;
import java.io.FileOutputStream;
import java.io.OutputStreamWriter;
import java.io.PrintWriter;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Base64;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.StringJoiner;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

/**
 * The chaos run's independent reader: Kafka's own Java consumer, not the Python client the service
 * uses.
 *
 * <p>{@code ChaosReader BOOTSTRAP OUT GROUP TOPIC SECONDS ISOLATION:TOPIC...} reads each topic from
 * its beginning to its end offsets (taken first; with {@code read_committed} the last stable offset),
 * one consumer per isolation level; the read_uncommitted one then reads, unless GROUP is {@code -},
 * the group's committed offsets of TOPIC's partitions. OUT gets tab-separated lines: {@code END iso topic partition offset}, {@code
 * REC iso topic partition offset timestamp key headers value} (key and value base64, {@code -} for null;
 * headers {@code name=value} in base64, comma-separated), {@code COMMITTED topic partition offset},
 * and {@code DONE} last. It fails (exit 1) rather than stop short of an end offset within SECONDS.
 */
public final class ChaosReader {
  private static final Duration API = Duration.ofSeconds(60);

  public static void main(String[] args) throws Exception {
    String bootstrap = args[0];
    String group = args[2];
    String committedTopic = args[3];
    long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(Long.parseLong(args[4]));
    Map<String, List<String>> topics = new LinkedHashMap<>();
    for (int i = 5; i < args.length; i++) {
      String[] spec = args[i].split(":", 2);
      topics.computeIfAbsent(spec[0], k -> new ArrayList<>()).add(spec[1]);
    }
    try (PrintWriter out =
        new PrintWriter(
            new BufferedWriter(
                new OutputStreamWriter(new FileOutputStream(args[1]), StandardCharsets.UTF_8)))) {
      for (Map.Entry<String, List<String>> e : topics.entrySet()) {
        try (KafkaConsumer<byte[], byte[]> consumer = consumer(bootstrap, e.getKey(), group)) {
          read(consumer, e.getKey(), e.getValue(), deadline, out);
          if (e.getKey().equals("read_uncommitted") && !group.equals("-")) {
            committed(consumer, committedTopic, out);
          }
        }
      }
      out.println("DONE");
    }
  }

  private static KafkaConsumer<byte[], byte[]> consumer(String bootstrap, String isolation, String group) {
    Properties props = new Properties();
    props.put("bootstrap.servers", bootstrap);
    props.put("isolation.level", isolation);
    props.put("enable.auto.commit", "false");
    props.put("client.id", "chaos-reader");
    props.put("max.partition.fetch.bytes", String.valueOf(4 << 20));
    props.put("max.poll.records", "5000");
    props.put("key.deserializer", ByteArrayDeserializer.class.getName());
    props.put("value.deserializer", ByteArrayDeserializer.class.getName());
    if (!group.equals("-")) {
      // Only to read the group's committed offsets: it assigns partitions, never joins or commits.
      props.put("group.id", group);
    }
    return new KafkaConsumer<>(props);
  }

  private static void read(
      KafkaConsumer<byte[], byte[]> consumer,
      String isolation,
      List<String> topics,
      long deadline,
      PrintWriter out) {
    List<TopicPartition> partitions = new ArrayList<>();
    for (String topic : topics) {
      for (PartitionInfo info : consumer.partitionsFor(topic, API)) {
        partitions.add(new TopicPartition(topic, info.partition()));
      }
    }
    consumer.assign(partitions);
    consumer.seekToBeginning(partitions);
    Map<TopicPartition, Long> end = consumer.endOffsets(partitions, API);
    for (TopicPartition tp : partitions) {
      out.println(
          String.join("\t", "END", isolation, tp.topic(), "" + tp.partition(), "" + end.get(tp)));
    }
    while (true) {
      boolean done = true;
      for (TopicPartition tp : partitions) {
        done &= consumer.position(tp, API) >= end.get(tp);
      }
      if (done) {
        return;
      }
      if (System.nanoTime() > deadline) {
        throw new IllegalStateException("reading " + topics + " did not reach the end offsets in time");
      }
      for (ConsumerRecord<byte[], byte[]> r : consumer.poll(Duration.ofMillis(500))) {
        StringJoiner headers = new StringJoiner(",");
        for (Header h : r.headers()) {
          headers.add(b64(h.key().getBytes(StandardCharsets.UTF_8)) + "=" + b64(h.value()));
        }
        out.println(
            String.join(
                "\t",
                "REC",
                isolation,
                r.topic(),
                "" + r.partition(),
                "" + r.offset(),
                "" + r.timestamp(),
                b64(r.key()),
                headers.toString(),
                b64(r.value())));
      }
    }
  }

  private static void committed(KafkaConsumer<byte[], byte[]> consumer, String topic, PrintWriter out) {
    Set<TopicPartition> partitions = new HashSet<>();
    for (PartitionInfo info : consumer.partitionsFor(topic, API)) {
      partitions.add(new TopicPartition(topic, info.partition()));
    }
    for (Map.Entry<TopicPartition, OffsetAndMetadata> e : consumer.committed(partitions, API).entrySet()) {
      if (e.getValue() != null) {
        TopicPartition tp = e.getKey();
        out.println(
            String.join("\t", "COMMITTED", tp.topic(), "" + tp.partition(), "" + e.getValue().offset()));
      }
    }
  }

  private static String b64(byte[] bytes) {
    return bytes == null ? "-" : Base64.getEncoder().encodeToString(bytes);
  }
}
