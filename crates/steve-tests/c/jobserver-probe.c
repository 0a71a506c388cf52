/* jobserver-probe: a C program written against libjobserver's interface, built by the tests
 * with gcc against steve's jobserver.h and libjobserver (through the installed pkg-config
 * file), shared and static. Each subcommand exercises calls and prints what they returned, one
 * fact per line, for the test to check; errors are printed by errno name.
 *
 *   jobs N LOG MS        connect, launch N jobs (each logs start/end to LOG and sleeps MS),
 *                        collect, close
 *   connect              connect and print the outcome and make's flags
 *   create K CMD         create_n(K - 1), print its return, run CMD (sh -c) as a job, close
 *   too-many             create_n(PIPE_BUF + 1), then create_n(PIPE_BUF)
 *   busy                 close with a job running, then after collecting it
 *   kept-token           a job hands a token to a grandchild that outlives it: close gives
 *                        EAGAIN while the grandchild runs, EIDRM after
 *   echild               a child that is not a job ends while jobserver_wait waits
 *   terminate            the program reaps a job itself and calls jobserver_terminate_job
 *   clear                jobserver_clear kills the running jobs
 *   print                jobserver_print with a job running
 *   env                  getenv, setenv and unsetenv, printing MAKEFLAGS after each
 *   eintr                with no token free, launch_job gives up after its wait, and a signal
 *                        interrupts a wait without end
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jobserver.h>

static char const * errno_name(int error)
{
  switch(error)
    {
    case ENODEV: return "ENODEV";
    case EACCES: return "EACCES";
    case EBADF: return "EBADF";
    case EPROTO: return "EPROTO";
    case EINVAL: return "EINVAL";
    case EBUSY: return "EBUSY";
    case EIDRM: return "EIDRM";
    case EAGAIN: return "EAGAIN";
    case ECHILD: return "ECHILD";
    case EINTR: return "EINTR";
    case ENOMEM: return "ENOMEM";
    case EMFILE: return "EMFILE";
    default: return strerrorname_np(error) ? strerrorname_np(error) : "unknown";
    }
}

static void report(char const * call, int result)
{
  if(result == -1)
    printf("%s failed: %s\n", call, errno_name(errno));
  else
    printf("%s returned %d\n", call, result);
  fflush(stdout);
}

static void sleep_ms(int ms)
{
  struct timespec pause = { ms / 1000, (ms % 1000) * 1000000L };
  while(nanosleep(&pause, &pause) == -1 && errno == EINTR)
    continue;
}

struct job
{
  int index;
  char const * log;
  int ms;
};

static void log_event(struct job const * job, char const * what)
{
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  char line[128];
  int length = snprintf(line, sizeof line, "%s c%d %lld%09ld\n", what, job->index,
                        (long long)now.tv_sec, now.tv_nsec);
  int fd = open(job->log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if(fd == -1 || write(fd, line, length) != length)
    _exit(90);
  close(fd);
}

static int run_job(void * data)
{
  struct job const * job = data;
  log_event(job, "start");
  sleep_ms(job->ms);
  log_event(job, "end");
  return 0;
}

static int ended = 0, failed = 0;

static void job_done(void * data, int status)
{
  (void)data;
  ++ended;
  if(!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    ++failed;
}

static int sleep_job(void * data)
{
  sleep_ms(*(int *)data);
  return 0;
}

static int collect_all(struct jobserver * js)
{
  int left;
  while((left = jobserver_collect(js, -1)) != 0)
    if(left == -1 && errno != EINTR)
      return -1;
  return 0;
}

static int jobs(int count, char const * log, int ms)
{
  struct jobserver js;
  if(jobserver_connect(&js) == -1)
    {
      report("connect", -1);
      return 1;
    }
  struct job * all = calloc(count, sizeof *all);
  for(int i = 0; i < count; ++i)
    {
      all[i] = (struct job){ i, log, ms };
      if(jobserver_launch_job(&js, -1, true, &all[i], run_job, job_done) == -1)
        {
          report("launch_job", -1);
          return 1;
        }
    }
  if(collect_all(&js) == -1)
    {
      report("collect", -1);
      return 1;
    }
  printf("ended %d failed %d\n", ended, failed);
  int closed = jobserver_close(&js);
  report("close", closed);
  return closed == 0 && ended == count && failed == 0 ? 0 : 1;
}

static int connect_only(void)
{
  struct jobserver js;
  int result = jobserver_connect(&js);
  report("connect", result);
  printf("dry_run %d debug %d keep_going %d\n", js.dry_run, js.debug, js.keep_going);
  if(result == 0)
    report("close", jobserver_close(&js));
  return result == 0 ? 0 : 3;
}

static int run_shell(void * data)
{
  execl("/bin/sh", "sh", "-c", (char const *)data, (char *)NULL);
  return 127;
}

static int create_and_run(int jobs_at_once, char * command)
{
  struct jobserver js;
  int result = jobserver_create_n(&js, jobs_at_once - 1, '+');
  report("create_n", result);
  if(result == -1)
    return 1;
  printf("MAKEFLAGS %s\n", getenv("MAKEFLAGS"));
  fflush(stdout);
  if(jobserver_launch_job(&js, -1, true, command, run_shell, job_done) == -1
     || collect_all(&js) == -1)
    {
      report("job", -1);
      return 1;
    }
  printf("ended %d failed %d\n", ended, failed);
  int closed = jobserver_close(&js);
  report("close", closed);
  return closed == 0 && failed == 0 ? 0 : 1;
}

static int too_many(void)
{
  struct jobserver js;
  report("create_n PIPE_BUF+1", jobserver_create_n(&js, PIPE_BUF + 1, '+'));
  report("create_n PIPE_BUF", jobserver_create_n(&js, PIPE_BUF, '+'));
  report("close", jobserver_close(&js));
  return 0;
}

static int busy(void)
{
  struct jobserver js;
  int ms = 300;
  report("create_n", jobserver_create_n(&js, 1, '+'));
  report("launch_job", jobserver_launch_job(&js, -1, true, &ms, sleep_job, job_done));
  report("close while running", jobserver_close(&js));
  report("collect", collect_all(&js));
  report("close", jobserver_close(&js));
  return 0;
}

static int grandchildren(void * data)
{
  (void)data;
  /* A job that joins the jobserver itself, starts two jobs (the first on its implicit token,
   * the second on a token from the pipe) and ends without collecting them: the token is
   * never written back. */
  struct jobserver inner;
  if(jobserver_connect(&inner) == -1)
    return 10;
  int ms = 1000;
  if(jobserver_launch_job(&inner, -1, true, &ms, sleep_job, NULL) == -1
     || jobserver_launch_job(&inner, -1, true, &ms, sleep_job, NULL) == -1)
    return 11;
  _exit(0);
}

static int kept_token(void)
{
  struct jobserver js;
  report("create_n", jobserver_create_n(&js, 2, '+'));
  report("launch_job", jobserver_launch_job(&js, -1, true, NULL, grandchildren, job_done));
  report("collect", collect_all(&js));
  printf("ended %d failed %d\n", ended, failed);
  int closed = jobserver_close(&js);
  report("close while a grandchild runs", closed);
  for(int tries = 0; closed == -1 && errno == EAGAIN && tries < 200; ++tries)
    {
      sleep_ms(50);
      closed = jobserver_close(&js);
    }
  report("close once it ended", closed);
  return 0;
}

static int echild(void)
{
  struct jobserver js;
  report("create_n", jobserver_create_n(&js, 1, '+'));
  pid_t plain = fork();
  if(plain == 0)
    _exit(7);
  int ms = 300;
  report("launch_job", jobserver_launch_job(&js, -1, true, &ms, sleep_job, job_done));
  int waited = jobserver_wait(&js, -1);
  report("wait", waited);
  printf("stopped is the plain child %d exit status %d\n", js.stopped == plain,
         WIFEXITED(js.status) ? WEXITSTATUS(js.status) : -1);
  report("collect", collect_all(&js));
  printf("ended %d failed %d\n", ended, failed);
  report("close", jobserver_close(&js));
  return 0;
}

static int exit_five(void * data)
{
  (void)data;
  return 5;
}

static int last_status = -1;

static void remember_status(void * data, int status)
{
  (void)data;
  last_status = status;
}

static int terminate(void)
{
  struct jobserver js;
  report("create_n", jobserver_create_n(&js, 1, '+'));
  report("launch_job", jobserver_launch_job(&js, -1, true, NULL, exit_five, remember_status));
  int status;
  pid_t pid = waitpid(-1, &status, 0);
  report("terminate_job", jobserver_terminate_job(&js, pid, status));
  printf("done saw exit status %d, jobs %zu\n", WEXITSTATUS(last_status), js.current_jobs);
  report("terminate_job of a stranger", jobserver_terminate_job(&js, 1, 0));
  report("close", jobserver_close(&js));
  return 0;
}

static int killed = 0;

static void count_killed(void * data, int status)
{
  (void)data;
  if(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
    ++killed;
}

static int clear(void)
{
  struct jobserver js;
  int ms = 60000;
  report("create_n", jobserver_create_n(&js, 2, '+'));
  for(int i = 0; i < 3; ++i)
    report("launch_job", jobserver_launch_job(&js, 0, true, &ms, sleep_job, count_killed));
  report("clear", jobserver_clear(&js));
  printf("killed %d jobs %zu\n", killed, js.current_jobs);
  report("close", jobserver_close(&js));
  return 0;
}

static int print(void)
{
  struct jobserver js;
  int ms = 200;
  report("create_n", jobserver_create_n(&js, 1, 'x'));
  report("launch_job", jobserver_launch_job(&js, -1, true, &ms, sleep_job, NULL));
  report("launch_job", jobserver_launch_job(&js, -1, true, &ms, sleep_job, NULL));
  int written = jobserver_print(stdout, &js, "; ", ", ", " | ");
  printf("\n");
  report("print", written);
  report("collect", collect_all(&js));
  report("close", jobserver_close(&js));
  return 0;
}

static void show_makeflags(char const * when)
{
  char const * value = getenv("MAKEFLAGS");
  printf("%s MAKEFLAGS [%s]\n", when, value ? value : "(unset)");
}

static int env(void)
{
  struct jobserver js;
  report("getenv", jobserver_getenv(&js));
  printf("dry_run %d debug %d keep_going %d\n", js.dry_run, js.debug, js.keep_going);
  report("create_n", jobserver_create_n(&js, 2, '+'));
  show_makeflags("after create");
  report("unsetenv", jobserver_unsetenv(&js));
  show_makeflags("after unsetenv");
  js.keep_going = false;
  report("setenv", jobserver_setenv(&js));
  show_makeflags("after setenv");
  report("close", jobserver_close(&js));
  return 0;
}

static void on_alarm(int signal)
{
  (void)signal;
}

static int eintr(void)
{
  struct jobserver js;
  if(jobserver_connect(&js) == -1)
    {
      report("connect", -1);
      return 1;
    }
  struct sigaction action = { 0 };
  action.sa_handler = on_alarm; /* no SA_RESTART: the wait is interrupted */
  sigaction(SIGALRM, &action, NULL);
  int ms = 2000;
  report("launch_job on the implicit token", jobserver_launch_job(&js, -1, true, &ms, sleep_job, job_done));
  report("launch_job with a 100 ms wait", jobserver_launch_job(&js, 100, true, &ms, sleep_job, job_done));
  alarm(1);
  report("launch_job waiting", jobserver_launch_job(&js, -1, true, &ms, sleep_job, job_done));
  printf("jobs %zu\n", js.current_jobs);
  report("collect", collect_all(&js));
  report("close", jobserver_close(&js));
  return 0;
}

int main(int argc, char ** argv)
{
  setvbuf(stdout, NULL, _IOLBF, 0);
  char const * mode = argc > 1 ? argv[1] : "";
  if(strcmp(mode, "jobs") == 0 && argc == 5)
    return jobs(atoi(argv[2]), argv[3], atoi(argv[4]));
  if(strcmp(mode, "connect") == 0)
    return connect_only();
  if(strcmp(mode, "create") == 0 && argc == 4)
    return create_and_run(atoi(argv[2]), argv[3]);
  if(strcmp(mode, "too-many") == 0)
    return too_many();
  if(strcmp(mode, "busy") == 0)
    return busy();
  if(strcmp(mode, "kept-token") == 0)
    return kept_token();
  if(strcmp(mode, "echild") == 0)
    return echild();
  if(strcmp(mode, "terminate") == 0)
    return terminate();
  if(strcmp(mode, "clear") == 0)
    return clear();
  if(strcmp(mode, "print") == 0)
    return print();
  if(strcmp(mode, "env") == 0)
    return env();
  if(strcmp(mode, "eintr") == 0)
    return eintr();
  fprintf(stderr, "usage: jobserver-probe jobs N LOG MS | connect | create K CMD | too-many | "
          "busy | kept-token | echild | terminate | clear | print | env | eintr\n");
  return 2;
}
