/* An LD_PRELOAD shim that lets a test set the wall clock of a redis-server it starts.
 *
 * The server's CLOCK_REALTIME (clock_gettime, gettimeofday, time) is read through a small
 * control file named by RL_CLOCK_FILE and mapped shared, so the test changes the clock by
 * writing to the file, with no signal and no restart:
 *   mode 0: real time + value_ms (a skewed clock);
 *   mode 1: exactly value_ms (a pinned clock: time moves only when the test moves it).
 * Monotonic clocks are untouched. The kernel is called directly (no dlsym, no allocation),
 * because jemalloc reads the clock while it initialises (libfaketime aborts there).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

struct control {
    volatile int64_t mode;
    volatile int64_t value_ms;
};

static struct control *ctl;

__attribute__((constructor)) static void clockshim_init(void) {
    const char *path = getenv("RL_CLOCK_FILE");
    if (!path) return;
    int fd = open(path, O_RDONLY);
    if (fd < 0) return;
    void *p = mmap(NULL, sizeof(struct control), PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (p != MAP_FAILED) ctl = p;
}

static void adjust(clockid_t id, struct timespec *ts) {
    if (!ctl || (id != CLOCK_REALTIME && id != CLOCK_REALTIME_COARSE)) return;
    int64_t mode = ctl->mode, value = ctl->value_ms;
    int64_t ns = mode == 1 ? value * 1000000 : ts->tv_sec * 1000000000LL + ts->tv_nsec + value * 1000000;
    ts->tv_sec = ns / 1000000000;
    ts->tv_nsec = ns % 1000000000;
}

int clock_gettime(clockid_t id, struct timespec *ts) {
    long r = syscall(SYS_clock_gettime, id, ts);
    if (r == 0) adjust(id, ts);
    return (int)r;
}

int gettimeofday(struct timeval *tv, void *tz) {
    (void)tz;
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0) return -1;
    if (tv) {
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    return 0;
}

time_t time(time_t *out) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (out) *out = ts.tv_sec;
    return ts.tv_sec;
}
