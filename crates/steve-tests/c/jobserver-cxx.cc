// jobserver-cxx: jobserver.h from C++ (its extern "C" block), built by the tests with g++ and
// linked to libjobserver through jobserver.pc. Creates a jobserver of two tokens, runs four
// jobs whose functions are lambdas, and closes it.
#include <cstdio>

#include <jobserver.h>

int main()
{
  struct jobserver js;
  int jobs = jobserver_create(&js, "++");
  std::printf("create returned %d\n", jobs);
  static int ended = 0;
  for(int i = 0; i < 4; ++i)
    if(jobserver_launch_job(&js, -1, true, nullptr, [](void *) { return 0; },
                            [](void *, int status) { ended += status == 0; }) == -1)
      return 1;
  while(jobserver_collect(&js, -1) > 0)
    continue;
  std::printf("ended %d\n", ended);
  std::printf("close returned %d\n", jobserver_close(&js));
  return 0;
}
