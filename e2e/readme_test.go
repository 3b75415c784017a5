package e2e

import (
	"context"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// readmeBlock returns the ```sh block that follows <!-- quickstart:name -->.
func readmeBlock(t *testing.T, readme, name string) string {
	t.Helper()
	re := regexp.MustCompile("(?s)<!-- quickstart:" + name + " -->\\s*```sh\\n(.*?)```")
	m := re.FindStringSubmatch(readme)
	if m == nil {
		t.Fatalf("README has no quickstart:%s block", name)
	}
	return m[1]
}

// The README's quick start, run exactly as written: the server block (the
// fake WeChat API and standalone wxgate) in the background, the client
// block after it, from the repository root.
func TestReadmeQuickStart(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	server, client := readmeBlock(t, readme, "server"), readmeBlock(t, readme, "client")
	for _, addr := range []string{"127.0.0.1:8080", "127.0.0.1:8081", "127.0.0.1:4222", "127.0.0.1:8090"} {
		if l, err := net.Listen("tcp", addr); err != nil {
			if os.Getenv("E2E_REQUIRE") == "1" {
				t.Fatalf("the quick start needs %s free: %v", addr, err)
			}
			t.Skipf("the quick start needs %s free: %v", addr, err)
		} else {
			l.Close()
		}
	}
	// The reader's environment, less anything that would change the
	// commands' meaning; the data goes to a temporary directory.
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "WECHAT_") && !strings.HasPrefix(kv, "HTTP_ADDR=") && !strings.HasPrefix(kv, "ADMIN_ADDR=") &&
			!strings.HasPrefix(kv, "NATS_") && !strings.HasPrefix(kv, "DATA_DIR=") {
			env = append(env, kv)
		}
	}
	env = append(env, "DATA_DIR="+t.TempDir())

	srv := exec.Command("bash", "-c", server)
	srv.Dir, srv.Env = "..", env
	srv.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // go run's child goes with it
	var srvOut strings.Builder
	srv.Stdout, srv.Stderr = &srvOut, &srvOut
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = srv.Wait(); close(exited) }()
	defer func() {
		_ = syscall.Kill(-srv.Process.Pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = syscall.Kill(-srv.Process.Pid, syscall.SIGKILL)
			<-exited
		}
		if t.Failed() {
			t.Logf("server output:\n%s", srvOut.String())
		}
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cl := exec.CommandContext(ctx, "bash", "-e", "-o", "pipefail", "-c", client)
	cl.Dir, cl.Env = "..", env
	out, err := cl.CombinedOutput()
	if err != nil {
		t.Fatalf("quick start client commands failed: %v\n%s", err, out)
	}
	for _, want := range []string{
		"verify: ok",
		"reply: text: 您扫描的场景值为：poster_a",
		"attempt 3/3",
		"场景值:poster_a",
		`"scene":"poster_a"`,
		`wechat_scene_scans_total{account="default",kind="scan",scene="poster_a"} 1`,
		// The code, made against the fake WeChat API, then with its counts.
		`"label":"Spring posters","permanent":false,"ticket":"gQ`,
		`"url":"http://weixin.qq.com/q/`,
		`"image_url":"/api/qrcodes/poster_a/image?ticket=gQ`,
		`"scans":2,"new_followers":1`,
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("quick start output lacks %q:\n%s", want, out)
		}
	}
}
