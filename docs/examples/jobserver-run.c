/* jobserver-run: runs each of its arguments as a shell command, as many at once as the
 * jobserver allows: the one make or steve gave it, or one of its own for JOBS jobs.
 *
 *   cc jobserver-run.c $(pkg-config --cflags --libs jobserver) -o jobserver-run
 *   ./jobserver-run 4 'cc -c a.c' 'cc -c b.c' 'cc -c c.c'       # 4 jobs of its own
 *   steve run -j8 -- ./jobserver-run 1 'make -C lib' 'make -C app'  # within steve's pool
 *
 * In a Makefile, give the rule a '+' so that make hands the jobserver on:
 *   all: ; +./jobserver-run 1 'cc -c a.c' 'cc -c b.c'
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jobserver.h>

static int run(void * command)
{
  execl("/bin/sh", "sh", "-c", (char const *)command, (char *)NULL);
  perror("jobserver-run: /bin/sh");
  return 127;
}

static int failures = 0;

static void finished(void * command, int status)
{
  if(!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    {
      fprintf(stderr, "jobserver-run: '%s' failed\n", (char const *)command);
      ++failures;
    }
}

static int join_or_create(struct jobserver * js, int jobs)
{
  if(jobserver_connect(js) == 0)
    return 0;
  if(errno == EACCES)
    fprintf(stderr, "jobserver-run: make withheld its jobserver (a rule without '+')\n");
  else if(errno != ENODEV)
    perror("jobserver-run: the jobserver in MAKEFLAGS cannot be used");
  /* No usable jobserver: one of our own, published for the commands' own children. */
  return jobserver_create_n(js, jobs > 0 ? jobs - 1 : 0, '+') == -1 ? -1 : 0;
}

int main(int argc, char ** argv)
{
  if(argc < 2)
    {
      fprintf(stderr, "usage: jobserver-run JOBS COMMAND...\n");
      return 2;
    }
  struct jobserver js;
  if(join_or_create(&js, atoi(argv[1])) == -1)
    {
      perror("jobserver-run: no jobserver");
      return 1;
    }
  if(js.dry_run)
    return 0; /* make -n: run nothing */

  for(int i = 2; i < argc; ++i)
    if(jobserver_launch_job(&js, -1, true, argv[i], run, finished) == -1)
      {
        perror("jobserver-run: cannot start a job");
        break;
      }

  int left;
  while((left = jobserver_collect(&js, -1)) != 0)
    if(left == -1 && errno != EINTR && errno != ECHILD)
      {
        perror("jobserver-run: waiting for jobs");
        return 1;
      }
  if(jobserver_close(&js) == -1 && errno == EIDRM)
    fprintf(stderr, "jobserver-run: some jobserver tokens never came back\n");
  return failures == 0 ? 0 : 1;
}
