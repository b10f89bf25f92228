/*
 * The pod sandbox's "pause" process: holds the pod's namespaces open while its
 * containers come and go, reaps the zombies a container leaves it (it is PID 1 of
 * the pod when the PID namespace is shared), and exits on SIGINT/SIGTERM.
 * Built static by scripts/k8s-cluster.sh into localhost/aeropartners/pause, because
 * the node cannot pull registry.k8s.io/pause.
 */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { _exit(128 + sig); }

static void reap(int sig) {
	(void)sig;
	while (waitpid(-1, NULL, WNOHANG) > 0) {
	}
}

int main(void) {
	struct sigaction on_stop = {.sa_handler = stop};
	struct sigaction on_child = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
	sigaction(SIGINT, &on_stop, NULL);
	sigaction(SIGTERM, &on_stop, NULL);
	sigaction(SIGCHLD, &on_child, NULL);
	for (;;) {
		pause();
	}
	return EXIT_FAILURE;
}
