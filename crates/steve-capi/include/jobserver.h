/* jobserver.h: steve's C library with libjobserver's interface.
 *
 * Join the GNU make jobserver this process was given, or create one for its children, and run
 * jobs (forked functions) under its tokens. The names, types, return values and error numbers
 * are libjobserver's; the library behind them is steve's client (see jobserver(7)): it also
 * joins /dev/steve, steve's FUSE jobserver file and any fifo: jobserver, on descriptors of its
 * own that are never left blocking.
 *
 * Link with `pkg-config --cflags --libs jobserver`.
 */
#ifndef JOBSERVER_H
#define JOBSERVER_H

#include <stdbool.h>
#include <stddef.h>    /* size_t */
#include <stdio.h>     /* FILE */
#include <sys/types.h> /* pid_t */

#ifdef __cplusplus
extern "C" {
#endif

struct jobserver_state; /* steve's own; never touched by the caller */

/* One jobserver, owned by the caller (a local variable will do). The fields up to `status` are
 * libjobserver's documented ones; the rest are for reading only and are kept up to date by
 * every call. */
struct jobserver
{
  bool dry_run;    /* make was asked for a dry run (n): run nothing */
  bool debug;      /* make was asked to print debugging information (d) */
  bool keep_going; /* make was asked to keep going after errors (k) */

  pid_t stopped;   /* after ECHILD: the child that ended and was not a job, else -1 */
  int status;      /* and its status, as waitpid(2) gives it */

  size_t size;         /* tokens this process created the jobserver with; 0 when joined */
  bool has_free_token; /* the implicit token (one job needs none) is not in use */
  size_t current_jobs; /* jobs launched and not yet collected */

  struct jobserver_state * state; /* NULL once closed */
};

typedef int (*jobserver_callback_t)(void * data);
typedef void (*jobserver_callback_return_t)(void * data, int status);

int jobserver_getenv(struct jobserver * js);
int jobserver_setenv(struct jobserver const * js);
int jobserver_unsetenv(struct jobserver const * js);

int jobserver_connect(struct jobserver * js);
int jobserver_create(struct jobserver * js, char const * tokens);
int jobserver_create_n(struct jobserver * js, size_t size, char token);
int jobserver_close(struct jobserver * js);

int jobserver_launch_job(struct jobserver * js, int wait, bool shared, void * data,
                         jobserver_callback_t func, jobserver_callback_return_t done);
int jobserver_terminate_job(struct jobserver * js, pid_t pid, int status);

int jobserver_wait(struct jobserver * js, int timeout);
int jobserver_collect(struct jobserver * js, int timeout);
int jobserver_clear(struct jobserver * js);

int jobserver_print(FILE * stream, struct jobserver const * js, char const * separator,
                    char const * job_separator, char const * inter_job_separator);

#ifdef __cplusplus
}
#endif

#endif /* JOBSERVER_H */
