/* A process for checkpoint tests: owns known pages and changes them only when told.
 * Commands, one per line on stdin (a FIFO the test writes):
 *   fill R FIRST COUNT GEN   page i of region R := pattern(i, GEN)
 *   same R FIRST COUNT       rewrite those pages with the bytes they hold
 *   map R PAGES              mmap a new anonymous region R and fill it with pattern(i, 0)
 *   unmap R                  munmap region R
 *   load R PATH              mmap a new anonymous region R as large as file PATH and read the file into it
 *   brk PAGES                grow the heap by PAGES pages (sbrk) and fill them with 0x5A
 *   sum                      print a digest of every region (the process's own check)
 * Every command answers one line on stdout: "ok ..." with what it did. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <fcntl.h>

#define PAGE 4096
#define MAXR 16
static unsigned char *base[MAXR];
static long pages[MAXR];

static void pattern(unsigned char *p, long i, long gen) {
    uint64_t *w = (uint64_t *)p;
    for (int k = 0; k < PAGE / 8; k++)
        w[k] = ((uint64_t)i << 32) ^ ((uint64_t)gen << 16) ^ (uint64_t)k ^ 0x9e3779b97f4a7c15ULL * (uint64_t)(i + 1);
}

static uint64_t digest(void) {
    uint64_t h = 1469598103934665603ULL;
    for (int r = 0; r < MAXR; r++)
        for (long i = 0; base[r] && i < pages[r] * PAGE; i += 8)
            h = (h ^ *(uint64_t *)(base[r] + i)) * 1099511628211ULL;
    return h;
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 64;
    setvbuf(stdout, NULL, _IOLBF, 0);
    char line[256], path[256];
    base[0] = mmap(NULL, n * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    pages[0] = n;
    for (long i = 0; i < n; i++) pattern(base[0] + i * PAGE, i, 0);
    printf("ready %p %ld\n", (void *)base[0], n);
    while (fgets(line, sizeof line, stdin)) {
        long r = 0, a = 0, b = 0, g = 0;
        if (sscanf(line, "fill %ld %ld %ld %ld", &r, &a, &b, &g) == 4) {
            for (long i = a; i < a + b; i++) pattern(base[r] + i * PAGE, i, g);
            printf("ok fill %ld %ld %ld %ld\n", r, a, b, g);
        } else if (sscanf(line, "same %ld %ld %ld", &r, &a, &b) == 3) {
            static unsigned char tmp[PAGE];
            for (long i = a; i < a + b; i++) { memcpy(tmp, base[r] + i * PAGE, PAGE); memcpy(base[r] + i * PAGE, tmp, PAGE); }
            printf("ok same %ld %ld %ld\n", r, a, b);
        } else if (sscanf(line, "map %ld %ld", &r, &a) == 2) {
            base[r] = mmap(NULL, a * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            pages[r] = a;
            for (long i = 0; i < a; i++) pattern(base[r] + i * PAGE, i, 0);
            printf("ok map %ld %p %ld\n", r, (void *)base[r], a);
        } else if (sscanf(line, "load %ld %200s", &r, path) == 2) {
            int fd = open(path, O_RDONLY);
            struct stat st;
            if (fd < 0 || fstat(fd, &st) != 0) { printf("error load %s\n", path); continue; }
            pages[r] = (st.st_size + PAGE - 1) / PAGE;
            base[r] = mmap(NULL, pages[r] * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            for (long off = 0; off < st.st_size;) { long k = read(fd, base[r] + off, st.st_size - off); if (k <= 0) break; off += k; }
            close(fd);
            printf("ok load %ld %p %ld\n", r, (void *)base[r], pages[r]);
        } else if (sscanf(line, "unmap %ld", &r) == 1) {
            munmap(base[r], pages[r] * PAGE);
            base[r] = NULL; pages[r] = 0;
            printf("ok unmap %ld\n", r);
        } else if (sscanf(line, "brk %ld", &a) == 1) {
            unsigned char *p = sbrk(a * PAGE);
            memset(p, 0x5A, a * PAGE);
            printf("ok brk %p %ld\n", (void *)p, a);
        } else if (strncmp(line, "sum", 3) == 0) {
            printf("ok sum %016llx\n", (unsigned long long)digest());
        } else {
            printf("error %s", line);
        }
    }
    return 0;
}
