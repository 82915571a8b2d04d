/*
 * Preloaded before libfaketime by tally-harness (`skewed_clock_env`): the two
 * wall-clock calls librdkafka times its condition-variable waits with return the
 * host's true time, while everything else (Rust's SystemTime, clock_gettime)
 * reads libfaketime's skewed clock.
 *
 * Why: librdkafka computes a wait's absolute deadline from gettimeofday() (or
 * timespec_get()) and waits with glibc's C11 cnd_timedwait, which calls glibc's
 * internal pthread code, not the pthread_cond_timedwait libfaketime wraps. The
 * deadline is then on the skewed clock and the wait on the true one: 30 s ahead,
 * every 1 s wait of a broker thread lasts 31 s; 30 s behind, every wait returns at
 * once and spins. On a host whose clock is really off both agree, so this shim
 * restores what the host would do rather than hiding anything from tally.
 */
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static int true_realtime(struct timespec *ts) {
    return (int)syscall(SYS_clock_gettime, CLOCK_REALTIME, ts);
}

int timespec_get(struct timespec *ts, int base) {
    if (base != TIME_UTC || true_realtime(ts) != 0) {
        return 0;
    }
    return base;
}

int gettimeofday(struct timeval *tv, void *tz) {
    struct timespec ts;
    (void)tz;
    if (true_realtime(&ts) != 0) {
        return -1;
    }
    tv->tv_sec = ts.tv_sec;
    tv->tv_usec = ts.tv_nsec / 1000;
    return 0;
}
