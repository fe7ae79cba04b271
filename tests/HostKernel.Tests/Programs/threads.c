/* A multi-threaded process for checkpoint tests: N worker threads (named worker-0 ...), each
 * owning one page of a shared region, blocked on a condition variable until told to write.
 * First line: "ready REGION N TID0 TID1 ..." once every worker runs and is named.
 * Commands, one per line on stdin:
 *   bump I    worker I adds 1 to every word of its page (the write is the worker's own)
 *   sum       print a digest of the region
 * Every command answers one line: "ok ...". */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/syscall.h>

#define PAGE 4096
#define MAXT 16
static unsigned char *region;
static pid_t tids[MAXT];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER, done = PTHREAD_COND_INITIALIZER;
static pthread_barrier_t started;
static int turn = -1;

static void *worker(void *arg) {
    int id = (int)(long)arg;
    char name[16];
    snprintf(name, sizeof name, "worker-%d", id);
    pthread_setname_np(pthread_self(), name);
    tids[id] = (pid_t)syscall(SYS_gettid);
    uint64_t *w = (uint64_t *)(region + (long)id * PAGE);
    for (int k = 0; k < PAGE / 8; k++) w[k] = ((uint64_t)id << 48) | (uint64_t)k;
    pthread_barrier_wait(&started);
    pthread_mutex_lock(&lock);
    for (;;) {
        while (turn != id) pthread_cond_wait(&wake, &lock);
        for (int k = 0; k < PAGE / 8; k++) w[k]++;
        turn = -1;
        pthread_cond_broadcast(&done);
    }
    return NULL;
}

static uint64_t digest(long n) {
    uint64_t h = 1469598103934665603ULL;
    for (long i = 0; i < n * PAGE; i += 8)
        h = (h ^ *(uint64_t *)(region + i)) * 1099511628211ULL;
    return h;
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 3;
    if (n < 1 || n > MAXT) return 2;
    setvbuf(stdout, NULL, _IOLBF, 0);
    region = mmap(NULL, n * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    pthread_barrier_init(&started, NULL, (unsigned)n + 1);
    pthread_t t[MAXT];
    for (long i = 0; i < n; i++) pthread_create(&t[i], NULL, worker, (void *)i);
    pthread_barrier_wait(&started);
    printf("ready %p %ld", (void *)region, n);
    for (long i = 0; i < n; i++) printf(" %d", tids[i]);
    printf("\n");
    char line[64];
    long i;
    while (fgets(line, sizeof line, stdin)) {
        if (sscanf(line, "bump %ld", &i) == 1 && i >= 0 && i < n) {
            pthread_mutex_lock(&lock);
            turn = (int)i;
            pthread_cond_broadcast(&wake);
            while (turn != -1) pthread_cond_wait(&done, &lock);
            pthread_mutex_unlock(&lock);
            printf("ok bump %ld\n", i);
        } else if (strncmp(line, "sum", 3) == 0) {
            printf("ok sum %016llx\n", (unsigned long long)digest(n));
        } else {
            printf("error %s", line);
        }
    }
    return 0;
}
