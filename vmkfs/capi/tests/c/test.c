/*
 * The C ABI exercised from C: create a disk, write it through sectors and bytes, add a REDO
 * link, read changed and allocated blocks, read from two threads at once, clone the chain with a
 * progress callback (and cancel clones two ways), see the lock refuse a second writer, commit.
 * Built with gcc and run (under valgrind where present) by tests/c_abi.rs, which then compares
 * the clone with the committed disk using qemu-img.
 *
 * usage: test DIR      (DIR: an empty folder; leaves DIR/base.vmdk and DIR/clone.vmdk)
 * Prints "ok" lines as it goes; exits 0 when every check held, 1 (with the failed check) if not.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vmkfs.h"

#define MIB (1024ull * 1024ull)
#define CAPACITY (16 * MIB)

static int failures;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "FAILED %s:%d: %s: ", __FILE__, __LINE__, #cond);                      \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, " (last error: %s)\n", vmkfs_last_error());                            \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

#define OK(call) CHECK((call) == VMKFS_OK, "%s", #call)

static char *path_in(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

/* Deterministic bytes for offset `off` of fill `seed`. */
static unsigned char byte_at(uint64_t off, unsigned seed) {
    return (unsigned char)((off * 2654435761u) >> 13 ^ seed * 97u) | 1u;
}

static void fill(unsigned char *buf, size_t len, uint64_t off, unsigned seed) {
    for (size_t i = 0; i < len; i++) buf[i] = byte_at(off + i, seed);
}

struct progress {
    unsigned calls;
    uint64_t last_done, total;
    int monotonic;
    unsigned cancel_after; /* 0: never cancel */
};

static int on_progress(void *user, uint64_t done, uint64_t total) {
    struct progress *p = user;
    if (done < p->last_done) p->monotonic = 0;
    p->calls++;
    p->last_done = done;
    p->total = total;
    return p->cancel_after == 0 || p->calls < p->cancel_after;
}

struct reader {
    VmkfsDisk *disk;
    uint64_t offset;
    unsigned seed;
    int ok;
};

/* Reads its 1 MiB 64 times over and checks every byte: two of these run at once on one handle. */
static void *read_loop(void *arg) {
    struct reader *r = arg;
    unsigned char *buf = malloc(MIB);
    r->ok = 1;
    for (int round = 0; round < 64 && r->ok; round++) {
        if (vmkfs_read_at(r->disk, r->offset, MIB, buf) != VMKFS_OK) r->ok = 0;
        for (size_t i = 0; i < MIB && r->ok; i++)
            if (buf[i] != byte_at(r->offset + i, r->seed)) r->ok = 0;
    }
    free(buf);
    return NULL;
}

static void print_ranges(const char *what, const VmkfsRangeList *l) {
    for (size_t i = 0; i < l->count; i++)
        printf("%s %llu %llu\n", what, (unsigned long long)l->ranges[i].offset,
               (unsigned long long)l->ranges[i].length);
}

int main(int argc, char **argv) {
    CHECK(argc == 2, "usage: test DIR");
    const char *dir = argv[1];
    char *base = path_in(dir, "base.vmdk");
    char *clone = path_in(dir, "clone.vmdk");
    char *never = path_in(dir, "never.vmdk");
    char *missing = path_in(dir, "missing.vmdk");
    VmkfsDisk *disk = NULL;

    CHECK(strlen(vmkfs_version()) > 0, "version");

    /* Errors: status code and text. */
    CHECK(vmkfs_open(NULL, 0, &disk) == VMKFS_ERR_USAGE && disk == NULL, "NULL path");
    CHECK(strstr(vmkfs_last_error(), "path is NULL") != NULL, "text: %s", vmkfs_last_error());
    CHECK(vmkfs_open(missing, 0, &disk) == VMKFS_ERR_BAD_INPUT, "missing disk");
    CHECK(strstr(vmkfs_last_error(), "missing.vmdk") != NULL, "text names the file: %s", vmkfs_last_error());
    CHECK(vmkfs_create(base, "floppy", CAPACITY) == VMKFS_ERR_USAGE, "unknown format");
    CHECK(strstr(vmkfs_last_error(), "monosparse") != NULL, "text lists formats: %s", vmkfs_last_error());
    printf("ok errors\n");

    /* A base disk, written by sectors and by bytes. */
    OK(vmkfs_create(base, "monosparse", CAPACITY));
    CHECK(vmkfs_create(base, "monosparse", CAPACITY) == VMKFS_ERR_USAGE, "exists");
    OK(vmkfs_open(base, VMKFS_OPEN_WRITABLE, &disk));
    unsigned char *buf = malloc(4 * MIB), *back = malloc(4 * MIB);
    fill(buf, MIB, 0, 1);
    OK(vmkfs_write(disk, 0, MIB / VMKFS_SECTOR_SIZE, buf));
    fill(buf, MIB, 8 * MIB, 1);
    OK(vmkfs_write_at(disk, 8 * MIB, MIB, buf));
    CHECK(vmkfs_write_at(disk, CAPACITY - 512, 1024, buf) != VMKFS_OK, "write past the end");
    OK(vmkfs_close(disk));
    printf("ok base written\n");

    /* A REDO link on top; the base becomes static. */
    char *child = NULL;
    OK(vmkfs_create_child(base, &child));
    CHECK(child != NULL && strstr(child, "base-000001.vmdk") != NULL, "child path %s", child);
    OK(vmkfs_open(child, VMKFS_OPEN_WRITABLE, &disk));
    VmkfsDisk *second = (VmkfsDisk *)1;
    CHECK(vmkfs_open(child, VMKFS_OPEN_WRITABLE, &second) == VMKFS_ERR_LOCKED && second == NULL, "second writer");
    memset(buf, 0xab, 64 * 1024);
    OK(vmkfs_write_at(disk, 5 * MIB, 64 * 1024, buf));      /* one block */
    OK(vmkfs_write(disk, (12 * MIB + 4096) / 512, 8, buf)); /* 4 KiB inside the block at 12 MiB */

    VmkfsInfo info;
    OK(vmkfs_get_info(disk, &info));
    CHECK(info.capacity == CAPACITY && info.sectors == CAPACITY / 512, "capacity %llu", (unsigned long long)info.capacity);
    CHECK(info.chain_depth == 2, "depth %u", info.chain_depth);
    CHECK(info.allocated == 2 * MIB + 2 * 64 * 1024, "allocated %llu", (unsigned long long)info.allocated);
    CHECK(strcmp(info.format, "monolithicSparse") == 0, "format %s", info.format);
    CHECK(strcmp(info.adapter, "lsilogic") == 0, "adapter %s", info.adapter);
    printf("ok info cid=%08x parent_cid=%08x\n", info.cid, info.parent_cid);

    /* Changed blocks since the base, and everything allocated. */
    VmkfsRangeList changed = {0}, allocated = {0};
    OK(vmkfs_changed_since(disk, NULL, 0, &changed));
    CHECK(changed.count == 2, "changed ranges %zu", changed.count);
    CHECK(changed.ranges[0].offset == 5 * MIB && changed.ranges[0].length == 64 * 1024, "first change");
    CHECK(changed.ranges[1].offset == 12 * MIB && changed.ranges[1].length == 64 * 1024, "second change");
    print_ranges("changed", &changed);
    vmkfs_free_ranges(&changed);
    CHECK(changed.ranges == NULL && changed.count == 0, "freed list is empty");
    vmkfs_free_ranges(&changed); /* a second release does nothing */
    OK(vmkfs_changed_since(disk, base, 1 << 20, &changed));
    CHECK(changed.count == 2 && changed.ranges[0].length == MIB, "1 MiB blocks");
    vmkfs_free_ranges(&changed);
    CHECK(vmkfs_changed_since(disk, missing, 0, &changed) == VMKFS_ERR_USAGE && changed.count == 0, "not a link");
    OK(vmkfs_query_allocated(disk, &allocated));
    CHECK(allocated.count == 4, "allocated ranges %zu", allocated.count);
    print_ranges("allocated", &allocated);
    vmkfs_free_ranges(&allocated);

    /* Reads through the chain: base data, the child's data, zeros. */
    OK(vmkfs_read(disk, 0, 2 * MIB / 512, back));
    fill(buf, MIB, 0, 1);
    CHECK(memcmp(back, buf, MIB) == 0, "base data through the child");
    for (size_t i = MIB; i < 2 * MIB; i++) CHECK(back[i] == 0, "zeros at %zu", i);
    OK(vmkfs_read_at(disk, 5 * MIB - 1, 2, back));
    CHECK(back[0] == 0 && back[1] == 0xab, "child data at 5 MiB");
    OK(vmkfs_close(disk));
    printf("ok chain reads\n");

    /* Two threads reading one handle at once. */
    OK(vmkfs_open(child, 0, &disk));
    struct reader r1 = {disk, 0, 1, 0}, r2 = {disk, 8 * MIB, 1, 0};
    pthread_t t1, t2;
    CHECK(pthread_create(&t1, NULL, read_loop, &r1) == 0, "thread");
    CHECK(pthread_create(&t2, NULL, read_loop, &r2) == 0, "thread");
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    CHECK(r1.ok && r2.ok, "concurrent reads");
    OK(vmkfs_close(disk));
    printf("ok concurrent reads\n");

    /* Clone the chain with progress; cancel by token and by callback. */
    struct progress p = {0, 0, 0, 1, 0};
    OK(vmkfs_clone(child, clone, "thin", on_progress, &p, NULL));
    CHECK(p.calls > 0 && p.monotonic && p.last_done == p.total && p.total > 0, "progress %u calls, %llu/%llu",
          p.calls, (unsigned long long)p.last_done, (unsigned long long)p.total);
    printf("ok clone with %u progress calls\n", p.calls);
    VmkfsCancel *token = vmkfs_cancel_new();
    vmkfs_cancel_set(token);
    CHECK(vmkfs_clone(child, never, "2gbsparse", NULL, NULL, token) == VMKFS_ERR_CANCELLED, "token");
    CHECK(access(never, F_OK) != 0, "no destination after cancel");
    vmkfs_cancel_reset(token);
    struct progress stop = {0, 0, 0, 1, 1};
    CHECK(vmkfs_clone(child, never, "monosparse", on_progress, &stop, token) == VMKFS_ERR_CANCELLED, "callback");
    CHECK(access(never, F_OK) != 0, "no destination after cancel");
    vmkfs_cancel_free(token);
    printf("ok cancelled clones\n");

    /* Commit the child into the base: the base reads what the chain read. */
    struct progress pc = {0, 0, 0, 1, 0};
    OK(vmkfs_commit(child, on_progress, &pc, NULL));
    CHECK(access(child, F_OK) != 0, "committed link removed");
    OK(vmkfs_open(base, 0, &disk));
    OK(vmkfs_get_info(disk, &info));
    CHECK(info.chain_depth == 1, "depth after commit %u", info.chain_depth);
    OK(vmkfs_read_at(disk, 12 * MIB + 4096, 1, back));
    CHECK(back[0] == 0xab, "committed data");
    OK(vmkfs_close(disk));
    CHECK(vmkfs_close(NULL) == VMKFS_OK, "close NULL");
    printf("ok commit\n");

    vmkfs_free_string(child);
    free(buf);
    free(back);
    free(base);
    free(clone);
    free(never);
    free(missing);
    printf("ok all %d\n", failures);
    return 0;
}
