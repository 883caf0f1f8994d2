/* A simulated parallel file system for bench/pynamic.py: a FUSE passthrough of one directory that
 * adds a fixed delay (default 500 us) to every metadata operation (lookup/getattr, readdir, open,
 * readlink, access, statfs), with the kernel's attribute, entry and page caches off, as on a
 * parallel file system client whose every metadata operation is a round trip to a server.
 *
 * Build: gcc -O2 -o slowfs slowfs.c $(pkg-config --cflags --libs fuse3)
 * Run:   slowfs SRC MNT [-o allow_other] [-f]      (SLOWFS_DELAY_US overrides the delay)
 */
#define FUSE_USE_VERSION 31
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

static int base_fd = -1;
static useconds_t delay_us = 500;

static const char *rel(const char *path) { return path[1] ? path + 1 : "."; }
static void slow(void) { usleep(delay_us); }

static void *sf_init(struct fuse_conn_info *conn, struct fuse_config *cfg) {
    /* No getattr round trip before every read of an open file (a parallel file system client
     * revalidates metadata on lookup and open, not on each read). */
    conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
    cfg->use_ino = 1;
    cfg->entry_timeout = 0;
    cfg->attr_timeout = 0;
    cfg->negative_timeout = 0;
    cfg->kernel_cache = 0;
    return NULL;
}

static int sf_getattr(const char *path, struct stat *st, struct fuse_file_info *fi) {
    (void)fi;
    slow();
    return fstatat(base_fd, rel(path), st, AT_SYMLINK_NOFOLLOW) ? -errno : 0;
}

static int sf_access(const char *path, int mask) {
    slow();
    return faccessat(base_fd, rel(path), mask, AT_SYMLINK_NOFOLLOW) ? -errno : 0;
}

static int sf_readlink(const char *path, char *buf, size_t size) {
    slow();
    ssize_t n = readlinkat(base_fd, rel(path), buf, size - 1);
    if (n < 0) return -errno;
    buf[n] = '\0';
    return 0;
}

static int sf_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off, struct fuse_file_info *fi,
                      enum fuse_readdir_flags flags) {
    (void)off; (void)fi; (void)flags;
    slow();
    int fd = openat(base_fd, rel(path), O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
    if (fd < 0) return -errno;
    DIR *dir = fdopendir(fd);
    if (!dir) { close(fd); return -errno; }
    struct dirent *de;
    while ((de = readdir(dir)) != NULL) {
        struct stat st = {0};
        st.st_ino = de->d_ino;
        st.st_mode = (mode_t)de->d_type << 12;
        if (fill(buf, de->d_name, &st, 0, 0)) break;
    }
    closedir(dir);
    return 0;
}

static int sf_open(const char *path, struct fuse_file_info *fi) {
    slow();
    int fd = openat(base_fd, rel(path), (fi->flags & O_ACCMODE) | O_NOFOLLOW);
    if (fd < 0) return -errno;
    fi->fh = (uint64_t)fd;
    fi->keep_cache = 0;
    return 0;
}

static int sf_read(const char *path, char *buf, size_t size, off_t off, struct fuse_file_info *fi) {
    (void)path;
    ssize_t n = pread((int)fi->fh, buf, size, off);
    return n < 0 ? -errno : (int)n;
}

static int sf_release(const char *path, struct fuse_file_info *fi) {
    (void)path;
    close((int)fi->fh);
    return 0;
}

static int sf_statfs(const char *path, struct statvfs *st) {
    (void)path;
    slow();
    return fstatvfs(base_fd, st) ? -errno : 0;
}

static const struct fuse_operations ops = {
    .init = sf_init, .getattr = sf_getattr, .access = sf_access, .readlink = sf_readlink,
    .readdir = sf_readdir, .open = sf_open, .read = sf_read, .release = sf_release, .statfs = sf_statfs,
};

int main(int argc, char *argv[]) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s SRC MNT [fuse options]\n", argv[0]);
        return 2;
    }
    const char *env = getenv("SLOWFS_DELAY_US");
    if (env) delay_us = (useconds_t)atoi(env);
    base_fd = open(argv[1], O_RDONLY | O_DIRECTORY);
    if (base_fd < 0) { perror(argv[1]); return 1; }
    argv[1] = argv[0];  /* fuse_main sees: prog MNT [options] */
    return fuse_main(argc - 1, argv + 1, &ops, NULL);
}
