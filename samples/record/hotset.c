/* A program with a tunable hot set, for recording: it allocates TOTAL MiB, fills them with
 * text-like bytes, then rewrites pages at RATE pages/s, a fraction HOT_SHARE of them inside the
 * first HOT MiB and the rest anywhere.
 *
 *   gcc -O2 -o hotset samples/record/hotset.c && ./hotset [TOTAL_MIB=256] [HOT_MIB=16] [RATE=20000] [HOT_SHARE=0.9]
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t state = 0x9E3779B97F4A7C15ull;
static uint64_t next(void) { /* xorshift64* */
    state ^= state >> 12; state ^= state << 25; state ^= state >> 27;
    return state * 0x2545F4914F6CDD1Dull;
}

static void fill(unsigned char *page, uint64_t stamp) {
    static const char words[] = "the quick brown fox jumps over the lazy dog 0123456789 ";
    for (int i = 0; i < 4096; i++)
        page[i] = (unsigned char)words[(i + stamp * 7) % (sizeof words - 1)];
    memcpy(page + (stamp % 4000), &stamp, sizeof stamp);
}

int main(int argc, char **argv) {
    size_t total = (size_t)(argc > 1 ? atol(argv[1]) : 256) << 20;
    size_t hot = (size_t)(argc > 2 ? atol(argv[2]) : 16) << 20;
    long rate = argc > 3 ? atol(argv[3]) : 20000;
    double share = argc > 4 ? atof(argv[4]) : 0.9;
    if (hot > total) hot = total;
    size_t pages = total / 4096, hot_pages = hot / 4096 ? hot / 4096 : 1;
    unsigned char *mem = malloc(total);
    if (!mem) { perror("malloc"); return 1; }
    for (size_t p = 0; p < pages; p++)
        fill(mem + p * 4096, p);
    uint64_t stamp = pages, threshold = (uint64_t)(share * 4294967296.0);
    struct timespec tick = { 0, 10 * 1000 * 1000 };  /* 10 ms: RATE / 100 pages per tick */
    for (;;) {
        for (long i = 0; i < rate / 100; i++) {
            uint64_t r = next();
            size_t p = (r & 0xffffffffu) < threshold ? (r >> 32) % hot_pages : (r >> 32) % pages;
            fill(mem + p * 4096, ++stamp);
        }
        nanosleep(&tick, NULL);
    }
}
