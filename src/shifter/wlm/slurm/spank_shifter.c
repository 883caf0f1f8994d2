/*
 * spank_shifter.so: Shifter's SPANK shim.  Options and names follow NERSC Shifter's plugin, so
 * job scripts run unchanged:  --image=IMG  --volume=SRC:DST[:FLAGS]  --module=A,B|none
 *
 * The logic is in Python (python -m shifter.cli.slurm).  This file only
 *   - registers the options (also in the allocator context: sbatch/salloc accept a plugin option
 *     only when it is registered there with spank_option_register);
 *   - in sbatch/salloc/srun (allocator and local contexts), runs
 *       PYTHON -I -m shifter.cli.slurm submit [--pull] --image=... --volume=... --module=...
 *     as the submitting user, and exports each NAME=VALUE line it prints (SHIFTER_IMAGE,
 *     SHIFTER_IMAGETYPE, SHIFTER_VOLUME, SHIFTER_MODULE only) to the job's environment (setenv:
 *     the allocator's environment becomes the job's) and to the job control environment
 *     (spank_job_control_setenv: the prolog and epilog see SPANK_SHIFTER_IMAGE ...).  When the
 *     helper fails (unknown image, bad volume), the submission fails; its error is on stderr.
 *
 * plugstack.conf:  optional /opt/shifter/lib/spank_shifter.so python=/opt/shifter/venv/bin/python [pull=yes]
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <slurm/spank.h>

SPANK_PLUGIN(shifter, 1);

#define MAX_OPT 8192
#define MAX_OUT 65536

static char opt_image[MAX_OPT], opt_volume[MAX_OPT], opt_module[MAX_OPT];
static char python[4096] = "/opt/shifter/venv/bin/python";
static int pull;

static int take(char *dst, const char *val, int append)
{
    if (!val)
        return -1;
    size_t used = append ? strlen(dst) : 0;
    size_t need = strlen(val) + (used ? 1 : 0);
    if (used + need >= MAX_OPT) {
        slurm_error("shifter: option value too long");
        return -1;
    }
    if (used)
        dst[used++] = ';';  /* repeated --volume: NERSC's ';'-separated list */
    strcpy(dst + used, val);
    return 0;
}

static int cb_image(int val, const char *arg, int remote) { (void)val; (void)remote; return take(opt_image, arg, 0); }
static int cb_volume(int val, const char *arg, int remote) { (void)val; (void)remote; return take(opt_volume, arg, 1); }
static int cb_module(int val, const char *arg, int remote) { (void)val; (void)remote; return take(opt_module, arg, 0); }

struct spank_option spank_options[] = {
    {"image", "image", "Shifter image to run the job's `shifter` tasks in (e.g. docker:ubuntu:22.04)", 1, 0, cb_image},
    {"volume", "SRC:DST[:FLAGS]", "Shifter volume(s) for the job's image (repeatable, ';'-separated)", 1, 0, cb_volume},
    {"module", "A,B|none", "Shifter site modules for the job's image", 1, 0, cb_module},
    SPANK_OPTIONS_TABLE_END
};

int slurm_spank_init(spank_t sp, int ac, char **av)
{
    for (int i = 0; i < ac; i++) {
        if (strncmp(av[i], "python=", 7) == 0 && strlen(av[i] + 7) < sizeof(python))
            strcpy(python, av[i] + 7);
        else if (strcmp(av[i], "pull=yes") == 0)
            pull = 1;
        else
            slurm_error("shifter: unknown plugstack.conf argument %s", av[i]);
    }
    if (spank_context() == S_CTX_ALLOCATOR) {
        for (struct spank_option *opt = spank_options; opt->name; opt++)
            if (spank_option_register(sp, opt) != ESPANK_SUCCESS)
                return -1;
    }
    return 0;
}

/* Run the helper; its stdout into out (NUL-terminated).  Returns its exit status, -1 on errors. */
static int run_helper(char *out, size_t size)
{
    char image[MAX_OPT + 16], volume[MAX_OPT + 16], module[MAX_OPT + 16];
    char *argv[10];
    int n = 0, fds[2], status;
    argv[n++] = python; argv[n++] = "-I"; argv[n++] = "-m"; argv[n++] = "shifter.cli.slurm";
    argv[n++] = "submit";
    if (pull) argv[n++] = "--pull";
    if (opt_image[0]) { snprintf(image, sizeof(image), "--image=%s", opt_image); argv[n++] = image; }
    if (opt_volume[0]) { snprintf(volume, sizeof(volume), "--volume=%s", opt_volume); argv[n++] = volume; }
    if (opt_module[0]) { snprintf(module, sizeof(module), "--module=%s", opt_module); argv[n++] = module; }
    argv[n] = NULL;
    if (pipe(fds) != 0)
        return -1;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        int null = open("/dev/null", O_RDONLY);  /* `sbatch < job.sh`: the script is not ours to read */
        if (null >= 0) { dup2(null, STDIN_FILENO); close(null); }
        dup2(fds[1], STDOUT_FILENO);
        close(fds[0]); close(fds[1]);
        execv(python, argv);
        fprintf(stderr, "shifter: cannot run %s: %s\n", python, strerror(errno));
        _exit(127);
    }
    close(fds[1]);
    size_t used = 0;
    ssize_t got;
    while ((got = read(fds[0], out + used, size - 1 - used)) != 0) {
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) break;
        used += (size_t)got;
        if (used == size - 1) break;
    }
    out[used] = '\0';
    close(fds[0]);
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static int allowed(const char *name)
{
    return !strcmp(name, "SHIFTER_IMAGE") || !strcmp(name, "SHIFTER_IMAGETYPE")
        || !strcmp(name, "SHIFTER_VOLUME") || !strcmp(name, "SHIFTER_MODULE");
}

/* 1 when every option srun has came from the job's environment (SLURM_SPANK__SLURM_SPANK_OPTION_
 * shifter_*: sbatch/salloc pass the job's plugin options to the steps that way) and the job's
 * variables are there: re-resolving would let a moved tag change the image under a running job. */
static int inherited(void)
{
    static const char *names[] = {"image", "volume", "module"};
    const char *values[] = {opt_image, opt_volume, opt_module};
    char var[128];
    if (!getenv("SLURM_JOB_ID") || (opt_image[0] && !getenv("SHIFTER_IMAGE")))
        return 0;
    for (int i = 0; i < 3; i++) {
        snprintf(var, sizeof(var), "SLURM_SPANK__SLURM_SPANK_OPTION_shifter_%s", names[i]);
        const char *env = getenv(var);
        if (strcmp(values[i], env ? env : "") != 0)
            return 0;
    }
    return 1;
}

int slurm_spank_init_post_opt(spank_t sp, int ac, char **av)
{
    (void)ac; (void)av;
    spank_context_t ctx = spank_context();
    static char out[MAX_OUT];
    if (ctx != S_CTX_ALLOCATOR && ctx != S_CTX_LOCAL)
        return 0;
    if (!opt_image[0] && !opt_volume[0] && !opt_module[0])
        return 0;
    if (ctx == S_CTX_LOCAL && inherited())
        return 0;  /* srun in the job: the job's options, resolved at submission, stay pinned */
    int rc = run_helper(out, sizeof(out));
    if (rc != 0) {
        slurm_error("shifter: the job's Shifter options were refused (see the error above)");
        return -1;
    }
    for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
        char *eq = strchr(line, '=');
        if (!eq) continue;
        *eq = '\0';
        if (!allowed(line)) continue;
        setenv(line, eq + 1, 1);
        if (spank_job_control_setenv(sp, line, eq + 1, 1) != ESPANK_SUCCESS) {
            slurm_error("shifter: cannot pass %s to the prolog", line);
            return -1;
        }
    }
    return 0;
}
