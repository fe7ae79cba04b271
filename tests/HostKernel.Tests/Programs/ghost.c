/* A process that maps a file MAP_SHARED and MAP_PRIVATE, then unlinks it: a ghost file for
 * checkpoint tests. Usage: ghost PATH. Prints "ready SHARED PRIVATE SIZE" (addresses in hex),
 * then waits until its stdin closes. The private mapping's first byte is written (a COW page);
 * the shared mapping's byte at 4096 is set to 0x5A, which goes into the file. */
#define _GNU_SOURCE
#include <stdio.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/stat.h>

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    setvbuf(stdout, NULL, _IOLBF, 0);
    int fd = open(argv[1], O_RDWR);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || st.st_size < 8192) return 3;
    unsigned char *sh = mmap(NULL, st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    unsigned char *pr = mmap(NULL, st.st_size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (sh == MAP_FAILED || pr == MAP_FAILED) return 4;
    close(fd);
    pr[0] ^= 0xFF;
    sh[4096] = 0x5A;
    if (unlink(argv[1]) != 0) return 5;
    printf("ready %p %p %ld\n", (void *)sh, (void *)pr, (long)st.st_size);
    char line[64];
    while (fgets(line, sizeof line, stdin))
        ;
    return 0;
}
