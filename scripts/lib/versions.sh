# shellcheck shell=bash disable=SC2034 # used by scripts/stack, which sources this
# Pinned versions for scripts/stack. Change them here only.
#
# Kafka: newest 4.x for which *both* kafka_2.13 and kafka-tools are on Maven Central
# (4.4.0 had kafka_2.13 but no kafka-tools yet when this was pinned).
KAFKA_VERSION=4.3.1
KAFKA_SCALA_VERSION=2.13
# Kafka 4.3 itself depends on log4j 2.25.4 and slf4j-api 1.7.36, so the SLF4J 1.x
# binding (log4j-slf4j-impl) is the matching one, not log4j-slf4j2-impl.
LOG4J_VERSION=2.25.4
MAVEN_DEPENDENCY_PLUGIN_VERSION=3.8.1
