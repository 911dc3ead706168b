package testutil

import (
	"bytes"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
)

// Process is the test binary run again as a child process (its TestMain
// sees env and runs a helper instead of the tests), so that a test can kill
// a worker with SIGKILL mid-flight — what no goroutine can simulate. Its
// stdout and stderr are kept for failure messages.
type Process struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	out    bytes.Buffer
	exited bool
}

// StartProcess starts os.Args[0] with the current environment plus env
// ("NAME=value" pairs). The process is killed when the test ends, if it is
// still running.
func StartProcess(t testing.TB, env ...string) *Process {
	t.Helper()
	p := &Process{cmd: exec.Command(os.Args[0])}
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout = processWriter{p}
	p.cmd.Stderr = p.cmd.Stdout
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Kill(t) })
	return p
}

// Kill sends SIGKILL (once) and waits for the process to exit.
func (p *Process) Kill(t testing.TB) {
	t.Helper()
	p.mu.Lock()
	exited := p.exited
	p.exited = true
	p.mu.Unlock()
	if exited {
		return
	}
	if err := p.cmd.Process.Kill(); err != nil {
		t.Errorf("kill the helper process: %v", err)
	}
	_ = p.cmd.Wait()
}

// Signal sends sig to the process (SIGSTOP and SIGCONT pause and resume it).
func (p *Process) Signal(sig syscall.Signal) error { return p.cmd.Process.Signal(sig) }

// Output is what the process wrote so far.
func (p *Process) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

type processWriter struct{ p *Process }

func (w processWriter) Write(b []byte) (int, error) {
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	return w.p.out.Write(b)
}
