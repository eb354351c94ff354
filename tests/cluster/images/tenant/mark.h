/*
 * What a hostile tenant's code does when it gets to run inside kubectl-sideload's helper:
 * it says so on stdout and stderr (the plugin's debug log records every node-side output),
 * tries to leave a file on the host's root disk through the helper's /host mount, and, if
 * it can, on the node's /tmp directly. The e2e test fails on any of these marks.
 */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define MARK "SIDELOAD-TENANT-CODE-RAN"

static void leave_mark(const char *who) {
	char line[256];
	int n = snprintf(line, sizeof line, "%s %s pid=%d\n", MARK, who, (int)getpid());
	if (n > 0) {
		(void)!write(1, line, (size_t)n);
		(void)!write(2, line, (size_t)n);
	}
	const char *files[] = {"/host/tmp/sideload-tenant-mark", "/tmp/sideload-tenant-mark-host"};
	for (unsigned i = 0; i < sizeof files / sizeof files[0]; i++) {
		int fd = open(files[i], O_WRONLY | O_CREAT | O_APPEND, 0644);
		if (fd >= 0) {
			if (n > 0)
				(void)!write(fd, line, (size_t)n);
			close(fd);
		}
	}
}
