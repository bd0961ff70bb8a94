/*
 * berth-pause is a pod's pause process: PID 1 of the pod's PID namespace,
 * holding the namespaces open while doing nothing but reap the zombies that
 * are reparented to it. It exits 0 on SIGINT or SIGTERM.
 *
 * It is C, linked static, for what a node pays per pod: every pod runs one,
 * so its private memory is multiplied by the pod count. A Go pause keeps
 * about 700 KiB of runtime heap and thread stacks private per process; this
 * one keeps about 50 KiB (docs/performance.md, "Density"). Static so that an
 * image holding only this binary runs, as registry.k8s.io/pause does.
 */
#include <signal.h>
#include <stddef.h>
#include <sys/wait.h>
#include <unistd.h>

static void shut_down(int sig)
{
	(void)sig;
	_exit(0);
}

/* reap collects every exited child without blocking: one SIGCHLD may stand
 * for many exits. */
static void reap(int sig)
{
	(void)sig;
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
}

int main(void)
{
	struct sigaction down = {.sa_handler = shut_down};
	struct sigaction child = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP | SA_RESTART};

	if (sigaction(SIGINT, &down, NULL) || sigaction(SIGTERM, &down, NULL) ||
	    sigaction(SIGCHLD, &child, NULL))
		return 1;
	for (;;)
		pause();
}
