package analytics

import (
	"fmt"
	"os"
	"testing"

	"github.com/elevacare/eleva-redis/internal/redistest"
)

// TestMain starts the shared redis-server and 3-node cluster on first use
// and stops them when the package's tests are done. Started with helperEnv
// set, the test binary is instead TestForwarderKill9's forwarder process.
func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" {
		fmt.Fprintln(os.Stderr, helperForwarder())
		os.Exit(1)
	}
	os.Exit(redistest.Run(m))
}
