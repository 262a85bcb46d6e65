// A stand-in for Jenkins running a declarative Jenkinsfile on one agent, for what a build of a commit does:
// which stages run, what their `sh` steps execute, what is archived. Usage (in the checked-out workspace):
//   groovy declarative_stand_in.groovy JENKINSFILE EVENTS_FILE [STAGE_STOOD_IN ...]
// The build's variables (BRANCH_NAME, GIT_COMMIT, CHANGE_ID for a pull request, WORKSPACE) come from the
// environment, as Jenkins sets them. Stages named after EVENTS_FILE are reported as run without running
// their steps (the caller prepared what they would have made, e.g. a venv that cannot be pip-installed
// here). EVENTS_FILE receives one JSON object per line: stage outcomes, archive/junit patterns, the result.
//
// Semantics follow Jenkins' Pipeline Syntax reference (https://www.jenkins.io/doc/book/pipeline/syntax/)
// and the step reference (https://www.jenkins.io/doc/pipeline/steps/):
// * `when`: every condition listed must hold; `not`, `allOf`, `anyOf`, `branch`, `changeRequest`,
//   `environment name:, value:`, `expression`. A skipped stage runs nothing.
// * `sh`: a script starting with `#!` runs with that interpreter, any other with `sh -xe`; a non-zero exit
//   fails the step unless `returnStatus: true`; `returnStdout: true` returns what it printed.
// * A failing step fails the build: later stages are skipped, `post` runs `always` and `failure` (else
//   `success`).
// * `withCredentials` binds each credential's variables for its body only (here to stand-in values).
// A step or condition this file does not know is an error, as Jenkins' "No such DSL method" is.
import groovy.json.JsonOutput

class BuildFailed extends RuntimeException {
    BuildFailed(String message) { super(message) }
}

class Build {
    Map<String, String> env = [:]
    List<Map> events = []
    Set<String> stoodIn = [] as Set
    File workspace
    String result = 'SUCCESS'

    void event(Map e) { events << e }

    Map<String, String> processEnv() {
        Map<String, String> all = new HashMap<String, String>(System.getenv())
        env.each { k, v -> if (v != null) all[k] = v.toString() }
        all
    }

    Object sh(Map args) {
        String script = args.script
        File file = File.createTempFile('jenkins-sh-', '.sh')
        file.text = script
        file.setExecutable(true)
        List<String> command = script.startsWith('#!') ? [file.path] : ['sh', '-xe', file.path]
        ProcessBuilder builder = new ProcessBuilder(command).directory(workspace)
        builder.environment().clear()
        builder.environment().putAll(processEnv())
        if (!args.returnStdout) builder.inheritIO()
        else builder.redirectError(ProcessBuilder.Redirect.INHERIT)
        long started = System.currentTimeMillis()
        Process process = builder.start()
        String out = args.returnStdout ? process.inputStream.text : ''
        int status = process.waitFor()
        file.delete()
        event(step: 'sh', status: status, script: script, seconds: (System.currentTimeMillis() - started) / 1000.0)
        if (args.returnStatus) return status
        if (status != 0) throw new BuildFailed("script returned exit code ${status}")
        return args.returnStdout ? out : null
    }
}

class Steps {
    Build build
    Steps(Build build) { this.build = build }

    Map getEnv() { build.env }

    Object sh(String script) { build.sh(script: script) }
    Object sh(Map args) { build.sh(args) }
    void echo(Object message) { println message }
    void error(String message) { throw new BuildFailed(message) }
    Object script(Closure body) { run(body) }
    Object container(String name, Closure body) { run(body) }

    Object withCredentials(List<Map> bindings, Closure body) {
        Map<String, String> saved = new HashMap<String, String>(build.env)
        bindings.each { binding ->
            binding.findAll { k, v -> k.toString().endsWith('ariable') }.each { role, name ->
                String value = role == 'usernameVariable' ? "user-of-${binding.credentialsId}" : "secret-of-${binding.credentialsId}"
                if (binding.kind == 'file') {
                    File secret = File.createTempFile('credential-', '.secret')
                    secret.text = value
                    value = secret.path
                }
                build.env[name] = value
            }
        }
        try {
            return run(body)
        } finally {
            build.env.clear()
            build.env.putAll(saved)
        }
    }

    Map usernamePassword(Map args) { [kind: 'usernamePassword'] + args }
    Map string(Map args) { [kind: 'string'] + args }
    Map file(Map args) { [kind: 'file'] + args }

    void junit(Map args) { build.event(step: 'junit', testResults: args.testResults) }
    void archiveArtifacts(Map args) {
        build.event(step: 'archiveArtifacts', artifacts: args.artifacts, excludes: args.excludes)
    }

    Object run(Closure body) {
        Closure c = body.rehydrate(this, this, this)
        c.resolveStrategy = Closure.DELEGATE_FIRST
        c.call()
    }

    def methodMissing(String name, args) {
        throw new MissingMethodException(name, Steps, args as Object[])
    }
}

class When {
    Build build
    List<Closure<Boolean>> conditions = []
    When(Build build) { this.build = build }

    static List<Closure<Boolean>> collect(Build build, Closure body) {
        When when = new When(build)
        Closure c = body.rehydrate(when, when, when)
        c.resolveStrategy = Closure.DELEGATE_FIRST
        c.call()
        when.conditions
    }

    void not(Closure body) {
        List<Closure<Boolean>> inner = collect(build, body)
        if (inner.size() != 1) throw new IllegalArgumentException('not { } takes exactly one condition')
        conditions << { -> !inner[0].call() }
    }
    void allOf(Closure body) { List inner = collect(build, body); conditions << { -> inner.every { it.call() } } }
    void anyOf(Closure body) { List inner = collect(build, body); conditions << { -> inner.any { it.call() } } }
    void changeRequest() { conditions << { -> build.env.CHANGE_ID as boolean } }
    void branch(String pattern) { conditions << { -> build.env.BRANCH_NAME == pattern } }
    void environment(Map args) {
        if (!args.name || args.value == null) throw new IllegalArgumentException('environment needs name: and value:')
        conditions << { -> build.env[args.name] == args.value }
    }
    void expression(Closure body) {
        conditions << { -> new Steps(build).run(body) as boolean }
    }
    def methodMissing(String name, args) {
        throw new MissingMethodException(name, When, args as Object[])
    }
}

class Stage {
    String name
    Closure whenBody
    Closure stepsBody
    void when(Closure body) { whenBody = body }
    void steps(Closure body) { stepsBody = body }
}

class Stages {
    List<Stage> stages = []
    void stage(String name, Closure body) {
        Stage stage = new Stage(name: name)
        Closure c = body.rehydrate(stage, stage, stage)
        c.resolveStrategy = Closure.DELEGATE_FIRST
        c.call()
        stages << stage
    }
}

class Post {
    Map<String, Closure> conditions = [:]
    def methodMissing(String name, args) {
        if (!(name in ['always', 'success', 'failure', 'unstable', 'changed', 'fixed', 'regression', 'aborted', 'cleanup'])) {
            throw new MissingMethodException(name, Post, args as Object[])
        }
        conditions[name] = args[0]
    }
}

class Environment {
    Build build
    def propertyMissing(String name, value) { build.env[name] = value.toString() }
}

// agent and options configure Jenkins itself, not what a build runs: accepted as written
class Anything {
    def methodMissing(String name, args) {
        args.findAll { it instanceof Closure }.each { Closure body ->
            Closure c = body.rehydrate(this, this, this)
            c.resolveStrategy = Closure.DELEGATE_FIRST
            c.call()
        }
        null
    }
}

class Pipeline {
    Build build
    Stages stages = new Stages()
    Post post = new Post()

    void agent(Closure body) { configure(new Anything(), body) }
    void options(Closure body) { configure(new Anything(), body) }
    void environment(Closure body) { configure(new Environment(build: build), body) }
    void stages(Closure body) { configure(stages, body) }
    void post(Closure body) { configure(post, body) }

    static void configure(Object delegate, Closure body) {
        Closure c = body.rehydrate(delegate, delegate, delegate)
        c.resolveStrategy = Closure.DELEGATE_FIRST
        c.call()
    }

    void run() {
        Steps steps = new Steps(build)
        boolean failed = false
        for (Stage stage : stages.stages) {
            if (failed) {
                build.event(stage: stage.name, outcome: 'skipped (an earlier stage failed)')
                continue
            }
            if (stage.whenBody != null && !When.collect(build, stage.whenBody).every { it.call() }) {
                build.event(stage: stage.name, outcome: 'skipped (when)')
                continue
            }
            if (stage.name in build.stoodIn) {
                build.event(stage: stage.name, outcome: 'ran (stood in)')
                continue
            }
            try {
                steps.run(stage.stepsBody)
                build.event(stage: stage.name, outcome: 'ran')
            } catch (BuildFailed e) {
                failed = true
                build.result = 'FAILURE'
                build.event(stage: stage.name, outcome: 'failed', error: e.message)
            }
        }
        List<String> conditions = ['always', failed ? 'failure' : 'success']
        for (String condition : conditions) {
            Closure body = post.conditions[condition]
            if (body != null) {
                try {
                    steps.run(body)
                } catch (BuildFailed e) {
                    build.result = 'FAILURE'
                    build.event(post: condition, outcome: 'failed', error: e.message)
                }
            }
        }
        build.event(result: build.result)
    }
}

File jenkinsfile = new File(args[0])
File eventsFile = new File(args[1])
Build build = new Build(workspace: new File(System.getProperty('user.dir')))
build.stoodIn.addAll(args.length > 2 ? args[2..-1] : [])
['BRANCH_NAME', 'GIT_COMMIT', 'CHANGE_ID', 'WORKSPACE', 'BUILD_URL', 'BUILD_NUMBER'].each { name ->
    if (System.getenv(name) != null) build.env[name] = System.getenv(name)
}
Pipeline pipeline = new Pipeline(build: build)
Binding binding = new Binding()
binding.setVariable('pipeline', { Closure body -> Pipeline.configure(pipeline, body) })
new GroovyShell(binding).evaluate(jenkinsfile)
pipeline.run()
eventsFile.text = build.events.collect { JsonOutput.toJson(it) }.join('\n') + '\n'
